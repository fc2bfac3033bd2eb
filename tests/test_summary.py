"""The summaries: the seed notebooks reproduced number for number, the classic layout, rich, JSON."""

from __future__ import annotations

import json
import os
import re

import pytest

import jaxcnn
from jaxcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from jaxcnn.summary import readable_bytes, summarize, terminal_width

from conftest import CONFIGS, SEEDS

ROW = re.compile(r"^(\S+) \((\w+)\)?\s*(\(None[^)]*\))\s+(\d+)\s*$")
CELL = re.compile(r"In\s\[(\d+)\]:")


def seed_summaries(filename: str) -> dict[str, dict]:
    """Every summary printed in a seed notebook, by its cell number: rows and totals."""
    text = (SEEDS / filename).read_text()
    cells = CELL.split(text)[1:]
    out = {}
    for number, body in zip(cells[::2], cells[1::2]):
        rows = [ROW.match(line) for line in body.splitlines()]
        rows = [(m[2], m[3], int(m[4])) for m in rows if m]
        if not rows:
            continue
        totals = {k: int(v.replace(",", "")) for k, v in re.findall(
            r"^(Total|Trainable|Non-trainable) params: ([\d,]+)", body, re.M)}
        out[number] = {"rows": rows, "totals": totals}
    return out


def seed_000_models() -> dict[str, jaxcnn.Sequential]:
    """The models of seed notebook 000, written as the notebook writes them (model.add)."""
    def conv_pool(pool: bool, head: bool) -> jaxcnn.Sequential:
        model = jaxcnn.Sequential()
        model.add(Conv2D(filters=16, kernel_size=2, padding="same", activation="relu", input_shape=(32, 32, 3)))
        if pool:
            model.add(MaxPooling2D(pool_size=2))
        model.add(Conv2D(filters=32, kernel_size=2, padding="same", activation="relu"))
        if pool:
            model.add(MaxPooling2D(pool_size=2))
        model.add(Conv2D(filters=64, kernel_size=2, padding="same", activation="relu"))
        if pool:
            model.add(MaxPooling2D(pool_size=2))
        if head:
            model.add(Flatten())
            model.add(Dense(500, activation="relu"))
            model.add(Dense(10, activation="softmax"))
        return model

    return {
        "13": jaxcnn.Sequential([Conv2D(filters=16, kernel_size=2, strides=2, padding="valid",
                                        activation="relu", input_shape=(200, 200, 1))]),
        "14": jaxcnn.Sequential([Conv2D(filters=32, kernel_size=3, strides=2, padding="same",
                                        activation="relu", input_shape=(128, 128, 3))]),
        "21": conv_pool(pool=False, head=False),
        "9": jaxcnn.Sequential([MaxPooling2D(pool_size=2, strides=2, input_shape=(100, 100, 15))]),
        "22": conv_pool(pool=True, head=False),
        "24": conv_pool(pool=True, head=True),
    }


SEED_000_CONFIGS = {"13": "conv_valid_s2", "14": "conv_same_s2", "21": "conv_depth", "9": "pool",
                    "22": "conv_pool", "24": "cifar_cnn"}


def assert_reproduces(summary: jaxcnn.summary.Summary, seed: dict) -> None:
    assert len(summary.rows) >= len(seed["rows"])
    for row, (type_, shape, params) in zip(summary.rows, seed["rows"]):
        # Keras 2 cut type names to the column ("MaxPooling2"); jaxcnn widens the column.
        assert row.type.startswith(type_), (row.type, type_)
        assert "(" + ", ".join("None" if d is None else str(d) for d in row.output_shape) + ")" == shape
        assert row.params == params
    if seed["totals"]:
        assert len(summary.rows) == len(seed["rows"])
        assert seed["totals"] == {"Total": summary.total_params, "Trainable": summary.trainable_params,
                                  "Non-trainable": summary.non_trainable_params}


def test_seed_notebook_000_has_the_six_summaries():
    assert sorted(seed_summaries("000_bbb04b86e135f796.txt"), key=int) == ["9", "13", "14", "21", "22", "24"]


@pytest.mark.parametrize("cell", ["13", "14", "21", "9", "22", "24"])
def test_seed_000_python_models_reproduce_the_printed_summaries(cell):
    seed = seed_summaries("000_bbb04b86e135f796.txt")[cell]
    assert_reproduces(summarize(seed_000_models()[cell]), seed)


@pytest.mark.parametrize("cell", ["13", "14", "21", "9", "22", "24"])
def test_seed_000_configs_reproduce_the_printed_summaries(cell):
    seed = seed_summaries("000_bbb04b86e135f796.txt")[cell]
    model = jaxcnn.load(CONFIGS / f"{SEED_000_CONFIGS[cell]}.toml")
    assert model == jaxcnn.Sequential(seed_000_models()[cell].layers, name=model.name,
                                      input_shape=seed_000_models()[cell].input_shape)
    assert_reproduces(summarize(model), seed)


def test_seed_003_vgg16_reproduces_its_printed_rows_and_the_keras_figures():
    seed = seed_summaries("003_23de5a7a4aeb393c.txt")["3"]  # the notebook's printout stops at conv2d_5
    assert len(seed["rows"]) == 7
    summary = summarize(jaxcnn.load(CONFIGS / "vgg16.toml"))
    assert_reproduces(summary, seed)
    assert summary.total_params == 138_357_544
    assert [r.params for r in summary.rows][-3:] == [102_764_544, 16_781_312, 4_097_000]


CIFAR_TEXT = """\
Model: "sequential"
___________________________________________________________________
Layer (type)                   Output Shape              Param #   
===================================================================
conv2d (Conv2D)                (None, 32, 32, 16)        208       
___________________________________________________________________
max_pooling2d (MaxPooling2D)   (None, 16, 16, 16)        0         
___________________________________________________________________
conv2d_1 (Conv2D)              (None, 16, 16, 32)        2080      
___________________________________________________________________
max_pooling2d_1 (MaxPooling2D) (None, 8, 8, 32)          0         
___________________________________________________________________
conv2d_2 (Conv2D)              (None, 8, 8, 64)          8256      
___________________________________________________________________
max_pooling2d_2 (MaxPooling2D) (None, 4, 4, 64)          0         
___________________________________________________________________
flatten (Flatten)              (None, 1024)              0         
___________________________________________________________________
dense (Dense)                  (None, 500)               512500    
___________________________________________________________________
dense_1 (Dense)                (None, 10)                5010      
===================================================================
Total params: 528,054
Trainable params: 528,054
Non-trainable params: 0
___________________________________________________________________"""


def test_classic_text_is_keras_layout_with_fresh_session_names_and_widened_columns():
    text = seed_000_models()["24"].summary(print_fn=None)
    assert text == CIFAR_TEXT


def test_classic_text_keeps_keras_widths_when_everything_fits():
    text = seed_000_models()["13"].summary(print_fn=None)
    lines = text.splitlines()
    assert lines[2] == "Layer (type)                 Output Shape              Param #   "
    assert lines[4] == "conv2d (Conv2D)              (None, 100, 100, 16)      80        "
    assert len(lines[1]) == 65 and set(lines[1]) == {"_"}


def test_summary_prints_by_default_and_returns_none(capsys):
    assert seed_000_models()["9"].summary() is None
    out = capsys.readouterr().out
    assert "max_pooling2d (MaxPooling2D) (None, 50, 50, 15)        0         \n" in out
    assert "Total params: 0\n" in out


def test_rich_table_has_keras3_byte_sizes():
    text = jaxcnn.load(CONFIGS / "mixed.toml").summary("rich", print_fn=None)
    assert "┃ Layer (type)" in text
    assert re.search(r"│ batch_normalization \(BatchNormalization\) +│ \(None, 19, 29, 8\) +│ +32 │", text)
    assert " Total params: 1,112 (4.34 KB)" in text
    assert " Trainable params: 1,096 (4.28 KB)" in text
    assert " Non-trainable params: 16 (64.00 B)" in text


def test_readable_bytes_matches_keras():
    assert readable_bytes(528_054 * 4) == "2.01 MB"
    assert readable_bytes(0) == "0.00 B"
    assert readable_bytes(138_357_544 * 4) == "527.79 MB"


def test_json_summary_for_tools():
    data = json.loads(jaxcnn.load(CONFIGS / "mixed.toml").summary("json", print_fn=None))
    assert data["total_params"] == 1112 and data["non_trainable_params"] == 16
    assert data["proved_by_eval_shape"] is True
    bn = data["layers"][1]
    assert bn["type"] == "BatchNormalization" and bn["output_shape"] == [None, 19, 29, 8]
    assert bn["param_shapes"] == {"batch_stats": {"mean": [8], "var": [8]},
                                  "params": {"scale": [8], "bias": [8]}}
    assert "2 per multiply-accumulate" in data["flops_convention"]


def test_optional_columns_flops_memory_receptive_field_formula():
    model = jaxcnn.load(CONFIGS / "lenet5.toml")
    text = model.summary(flops=True, columns=["memory", "receptive_field", "formula"], print_fn=None, width=1000)
    first = text.splitlines()[4]
    # conv2d: 28*28*6 outputs, 5*5*1 taps: 2*117,600 MACs + 4,704 bias adds.
    assert "conv2d (Conv2D)" in first and "239,904" in first and "18.38 KB" in first and "5x5" in first
    assert "6*5*5*1 + 6 = 156" in first and "height = ceil((32 - 5 + 1) / 1) = 28" in first
    rows = summarize(model).rows
    assert [r.receptive_field for r in rows] == [(5, 5), (6, 6), (14, 14), (16, 16), None, None, None, None]


# LeNet-5's forward FLOPs by hand (2 per multiply-accumulate, +1 per bias add):
# conv2d 2*(28*28*6)*(5*5*1) + 28*28*6 = 239,904; conv2d_1 2*(10*10*16)*(5*5*6) + 10*10*16 = 481,600;
# dense 2*400*120 + 120 = 96,120; dense_1 2*120*84 + 84 = 20,244; dense_2 2*84*10 + 10 = 1,690;
# pooling and flatten 0: 839,558 in all.
LENET5_FLOPS_FOOTER = "Forward FLOPs per example: 839,558 (2 per multiply-accumulate of Conv2D and Dense, +1 per bias add)"


@pytest.mark.parametrize("format", ["text", "rich"])
def test_flops_footer_is_one_line_stating_the_convention_once(format):
    text = jaxcnn.load(CONFIGS / "lenet5.toml").summary(format, flops=True, print_fn=None)
    footers = [line.strip() for line in text.splitlines() if "FLOPs per example" in line]
    assert footers == [LENET5_FLOPS_FOOTER]
    assert text.lower().count("per multiply-accumulate") == 1


def _cells(text: str, header: str) -> list[str]:
    """The cells of column ``header`` in a classic-layout summary, each cell's wrapped lines
    joined with spaces."""
    lines = text.splitlines()
    start = lines[2].index(header)
    cells, current = [], []
    for line in lines[4:]:
        if set(line) <= {"_", "="}:
            cells.append(" ".join(current))
            current = []
            if set(line) == {"="}:
                break
        else:
            current.append(line[start:].split("  ")[0].strip() if header != "Formula" else line[start:].rstrip())
    return cells


@pytest.mark.parametrize("width", [80, 100, 130])
def test_long_formula_cells_wrap_to_the_width_and_keep_their_text(width):
    model = jaxcnn.load(CONFIGS / "lenet5.toml")
    text = model.summary(columns=["formula"], print_fn=None, width=width)
    # Layer, Output Shape and Param # keep Keras's widths (39 + 26 + 10 here); Formula gets the rest,
    # never less than 24 characters.
    assert max(len(line) for line in text.splitlines()) == max(width, 39 + 26 + 10 + 24)
    formulas = [f"{r.formula.output} | params: {r.formula.params}" for r in summarize(model).rows]
    assert _cells(text, "Formula") == formulas
    unwrapped = model.summary(columns=["formula"], print_fn=None, width=1000)
    assert max(len(line) for line in unwrapped.splitlines()) == 39 + 26 + 10 + max(map(len, formulas)) + 1
    assert _cells(unwrapped, "Formula") == formulas


def test_default_columns_never_wrap_whatever_the_width():
    for width in (20, 65, 1000):
        assert seed_000_models()["24"].summary(print_fn=None, width=width) == CIFAR_TEXT


def test_the_width_defaults_to_the_terminal(monkeypatch):
    model = jaxcnn.load(CONFIGS / "lenet5.toml")
    for columns in (120, 160):
        monkeypatch.setenv("COLUMNS", str(columns))  # what shutil.get_terminal_size reads first
        assert terminal_width() == columns
        assert model.summary(columns=["formula"], print_fn=None) == model.summary(
            columns=["formula"], print_fn=None, width=columns)
    monkeypatch.delenv("COLUMNS")

    def no_terminal(*args):
        raise OSError("not a terminal")

    monkeypatch.setattr(os, "get_terminal_size", no_terminal)  # stdout is a pipe or a file
    assert terminal_width() == 100


def test_rich_table_wraps_formula_and_lowering_to_the_width():
    model = jaxcnn.load(CONFIGS / "mixed.toml")
    text = model.summary("rich", columns=["formula", "lowering"], print_fn=None, width=150)
    assert max(len(line) for line in text.splitlines()) == 150
    assert re.search(r"│ conv2d \(Conv2D\) +│ \(None, 19, 29, 8\) +│ +96 │ height = ceil\(37 / 2\)", text)
    # Narrower than the unwrapped columns allow: they stay whole (nothing cut to "…"), and the
    # formula and lowering columns get their minimum width.
    narrow = model.summary("rich", columns=["formula", "lowering"], print_fn=None, width=40)
    assert "…" not in narrow and "│ global_average_pooling2d (GlobalAveragePooling2D) │" in narrow
    assert narrow == model.summary("rich", columns=["formula", "lowering"], print_fn=None, width=100)
    assert "…" not in model.summary("rich", print_fn=None, width=20)
