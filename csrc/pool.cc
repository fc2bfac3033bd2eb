// Pooling through oneDNN, NHWC float32: max pooling (padding never wins; the forward pass records in
// oneDNN's workspace which element of each window was the maximum, and the backward pass sends the
// gradient to that element alone) and average pooling over each window's in-bounds elements
// (pooling_avg_exclude_padding, Keras's "same" average).
#include <cstring>
#include <variant>

#include "common.h"

namespace jaxcnn {
namespace {

using dnnl::algorithm;
using dnnl::prop_kind;

struct Geom {
  int64_t n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pb, pl, pr;

  std::vector<int64_t> Values() const { return {n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pb, pl, pr}; }
  static Geom From(const std::vector<int64_t>& v) {
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]};
  }
  memory::desc Src() const { return Nhwc(n, h, w, c, Dt::f32); }
  memory::desc Dst() const { return Nhwc(n, oh, ow, c, Dt::f32); }
  bool Empty() const { return n == 0 || c == 0 || oh == 0 || ow == 0; }

  dnnl::pooling_forward::primitive_desc Forward(algorithm alg, const dnnl::primitive_attr& attr) const {
    return {Engine(), prop_kind::forward_training, alg, Src(), Dst(), {sh, sw}, {kh, kw}, {0, 0},
            {pt, pl}, {pb, pr}, attr};
  }
};

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + ")";
}

int64_t OutSize(int64_t in, int64_t k, int64_t s, int64_t lo, int64_t hi) {
  int64_t span = in + lo + hi - k;
  return span < 0 ? 0 : span / s + 1;
}

// The geometry of x (N, H, W, C) pooled into y (N, OH, OW, C), or why they disagree.
std::variant<Geom, std::string> MakeGeom(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y,
                                         ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                                         ffi::Span<const int64_t> padding) {
  if (window.size() != 2 || strides.size() != 2 || padding.size() != 4)
    return std::string("window and strides need 2 values and padding 4 (top, bottom, left, right)");
  for (int64_t v : window) if (v < 1) return "the window must be positive, got " + std::to_string(v);
  for (int64_t v : strides) if (v < 1) return "strides must be positive, got " + std::to_string(v);
  for (int64_t v : padding) if (v < 0) return "padding must not be negative, got " + std::to_string(v);
  if (x.size() != 4 || y.size() != 4) return "x and y must be 4-D, got " + Shape(x) + " and " + Shape(y);
  Geom g{x[0], x[1], x[2], x[3], y[1], y[2], window[0], window[1], strides[0], strides[1],
         padding[0], padding[1], padding[2], padding[3]};
  if (padding[0] >= g.kh || padding[1] >= g.kh || padding[2] >= g.kw || padding[3] >= g.kw)
    return std::string("padding must be smaller than the window");
  if (y[0] != g.n || y[3] != g.c || g.oh != OutSize(g.h, g.kh, g.sh, g.pt, g.pb) ||
      g.ow != OutSize(g.w, g.kw, g.sw, g.pl, g.pr))
    return "x " + Shape(x) + ", y " + Shape(y) + ": y does not match the pooling's output shape";
  return g;
}

// ---- max pooling ---------------------------------------------------------------------------------

struct MaxFwd {
  dnnl::pooling_forward prim;
  memory src, dst, ws, scratch;
};

MaxFwd MakeMaxFwd(const std::vector<int64_t>& v) {
  Geom g = Geom::From(v);
  auto pd = g.Forward(algorithm::pooling_max, UserScratchpad());
  return {dnnl::pooling_forward(pd), memory(g.Src(), Engine(), DNNL_MEMORY_NONE),
          memory(g.Dst(), Engine(), DNNL_MEMORY_NONE), memory(pd.workspace_desc(), Engine(), DNNL_MEMORY_NONE),
          Scratchpad(pd.scratchpad_desc())};
}

struct MaxBwd {
  dnnl::pooling_backward prim;
  memory diff_dst, diff_src, ws, scratch;
};

MaxBwd MakeMaxBwd(const std::vector<int64_t>& v) {
  Geom g = Geom::From(v);
  auto hint = g.Forward(algorithm::pooling_max, dnnl::primitive_attr());
  dnnl::pooling_backward::primitive_desc pd(Engine(), algorithm::pooling_max, g.Src(), g.Dst(), {g.sh, g.sw},
                                            {g.kh, g.kw}, {0, 0}, {g.pt, g.pl}, {g.pb, g.pr}, hint,
                                            UserScratchpad());
  return {dnnl::pooling_backward(pd), memory(g.Dst(), Engine(), DNNL_MEMORY_NONE),
          memory(g.Src(), Engine(), DNNL_MEMORY_NONE), memory(hint.workspace_desc(), Engine(), DNNL_MEMORY_NONE),
          Scratchpad(pd.scratchpad_desc())};
}

std::optional<std::string> WrongWorkspace(const memory& ws, size_t bytes) {
  size_t want = ws.get_desc().get_size();
  if (bytes == want) return std::nullopt;
  return "the workspace must be " + std::to_string(want) + " bytes, got " + std::to_string(bytes);
}

size_t WorkspaceBytes(const Geom& g) {
  return g.Empty() ? 0 : g.Forward(algorithm::pooling_max, dnnl::primitive_attr()).workspace_desc().get_size();
}

ffi::Error MaxPoolFwdImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::U8> ws,
                          ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                          ffi::Span<const int64_t> padding) {
  const char* what = "jaxcnn_onednn_max_pool_fwd";
  auto geom = MakeGeom(x.dimensions(), y->dimensions(), window, strides, padding);
  if (auto* bad = std::get_if<std::string>(&geom)) return Invalid(what, *bad);
  const Geom& g = std::get<Geom>(geom);
  if (g.Empty()) return ffi::Error::Success();
  return Guarded(what, [&] {
    auto lock = ExecLock();
    MaxFwd& e = Cached<MaxFwd>(Key("max_fwd", g.Values()), MakeMaxFwd, g.Values());
    if (auto bad = WrongWorkspace(e.ws, ws->size_bytes())) return Invalid(what, *bad);
    e.src.set_data_handle(x.typed_data());
    e.dst.set_data_handle(y->typed_data());
    e.ws.set_data_handle(ws->typed_data());
    e.prim.execute(Stream(), {{DNNL_ARG_SRC, e.src}, {DNNL_ARG_DST, e.dst}, {DNNL_ARG_WORKSPACE, e.ws},
                              {DNNL_ARG_SCRATCHPAD, e.scratch}});
    Stream().wait();
    return ffi::Error::Success();
  });
}

ffi::Error MaxPoolBwdImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::U8> ws, ffi::ResultBuffer<ffi::F32> dx,
                          ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                          ffi::Span<const int64_t> padding) {
  const char* what = "jaxcnn_onednn_max_pool_bwd";
  auto geom = MakeGeom(dx->dimensions(), dy.dimensions(), window, strides, padding);
  if (auto* bad = std::get_if<std::string>(&geom)) return Invalid(what, *bad);
  const Geom& g = std::get<Geom>(geom);
  if (g.Empty()) {
    Zero(*dx);
    return ffi::Error::Success();
  }
  return Guarded(what, [&] {
    auto lock = ExecLock();
    MaxBwd& e = Cached<MaxBwd>(Key("max_bwd", g.Values()), MakeMaxBwd, g.Values());
    if (auto bad = WrongWorkspace(e.ws, ws.size_bytes())) return Invalid(what, *bad);
    e.diff_dst.set_data_handle(dy.typed_data());
    e.diff_src.set_data_handle(dx->typed_data());
    e.ws.set_data_handle(ws.typed_data());
    e.prim.execute(Stream(), {{DNNL_ARG_DIFF_DST, e.diff_dst}, {DNNL_ARG_DIFF_SRC, e.diff_src},
                              {DNNL_ARG_WORKSPACE, e.ws}, {DNNL_ARG_SCRATCHPAD, e.scratch}});
    Stream().wait();
    return ffi::Error::Success();
  });
}

// ---- average pooling (padding excluded) ----------------------------------------------------------

struct AvgFwd {
  dnnl::pooling_forward prim;
  memory src, dst, scratch;
};

AvgFwd MakeAvgFwd(const std::vector<int64_t>& v) {
  Geom g = Geom::From(v);
  auto pd = g.Forward(algorithm::pooling_avg_exclude_padding, UserScratchpad());
  return {dnnl::pooling_forward(pd), memory(g.Src(), Engine(), DNNL_MEMORY_NONE),
          memory(g.Dst(), Engine(), DNNL_MEMORY_NONE), Scratchpad(pd.scratchpad_desc())};
}

struct AvgBwd {
  dnnl::pooling_backward prim;
  memory diff_dst, diff_src, scratch;
};

AvgBwd MakeAvgBwd(const std::vector<int64_t>& v) {
  Geom g = Geom::From(v);
  auto hint = g.Forward(algorithm::pooling_avg_exclude_padding, dnnl::primitive_attr());
  dnnl::pooling_backward::primitive_desc pd(Engine(), algorithm::pooling_avg_exclude_padding, g.Src(), g.Dst(),
                                            {g.sh, g.sw}, {g.kh, g.kw}, {0, 0}, {g.pt, g.pl}, {g.pb, g.pr},
                                            hint, UserScratchpad());
  return {dnnl::pooling_backward(pd), memory(g.Dst(), Engine(), DNNL_MEMORY_NONE),
          memory(g.Src(), Engine(), DNNL_MEMORY_NONE), Scratchpad(pd.scratchpad_desc())};
}

ffi::Error AvgPoolFwdImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                          ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                          ffi::Span<const int64_t> padding) {
  const char* what = "jaxcnn_onednn_avg_pool_fwd";
  auto geom = MakeGeom(x.dimensions(), y->dimensions(), window, strides, padding);
  if (auto* bad = std::get_if<std::string>(&geom)) return Invalid(what, *bad);
  const Geom& g = std::get<Geom>(geom);
  if (g.Empty()) return ffi::Error::Success();
  return Guarded(what, [&] {
    auto lock = ExecLock();
    AvgFwd& e = Cached<AvgFwd>(Key("avg_fwd", g.Values()), MakeAvgFwd, g.Values());
    e.src.set_data_handle(x.typed_data());
    e.dst.set_data_handle(y->typed_data());
    e.prim.execute(Stream(), {{DNNL_ARG_SRC, e.src}, {DNNL_ARG_DST, e.dst}, {DNNL_ARG_SCRATCHPAD, e.scratch}});
    Stream().wait();
    return ffi::Error::Success();
  });
}

ffi::Error AvgPoolBwdImpl(ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                          ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                          ffi::Span<const int64_t> padding) {
  const char* what = "jaxcnn_onednn_avg_pool_bwd";
  auto geom = MakeGeom(dx->dimensions(), dy.dimensions(), window, strides, padding);
  if (auto* bad = std::get_if<std::string>(&geom)) return Invalid(what, *bad);
  const Geom& g = std::get<Geom>(geom);
  if (g.Empty()) {
    Zero(*dx);
    return ffi::Error::Success();
  }
  return Guarded(what, [&] {
    auto lock = ExecLock();
    AvgBwd& e = Cached<AvgBwd>(Key("avg_bwd", g.Values()), MakeAvgBwd, g.Values());
    e.diff_dst.set_data_handle(dy.typed_data());
    e.diff_src.set_data_handle(dx->typed_data());
    e.prim.execute(Stream(), {{DNNL_ARG_DIFF_DST, e.diff_dst}, {DNNL_ARG_DIFF_SRC, e.diff_src},
                              {DNNL_ARG_SCRATCHPAD, e.scratch}});
    Stream().wait();
    return ffi::Error::Success();
  });
}

}  // namespace
}  // namespace jaxcnn

#pragma GCC visibility push(default)  // what jaxcnn.onednn and XLA look up

// The bytes of max pooling's workspace for x (N, H, W, C) pooled into (N, OH, OW, C): v holds
// N, H, W, C, OH, OW, KH, KW, SH, SW, PT, PB, PL, PR. -1 when oneDNN refuses the geometry.
extern "C" int64_t jaxcnn_onednn_max_pool_workspace_bytes(const int64_t* v) {
  try {
    auto lock = jaxcnn::ExecLock();
    return static_cast<int64_t>(jaxcnn::WorkspaceBytes(jaxcnn::Geom::From(std::vector<int64_t>(v, v + 14))));
  } catch (const std::exception&) {
    return -1;
  }
}

namespace ffi = xla::ffi;

#define JAXCNN_POOL_ATTRS                            \
  .Attr<ffi::Span<const int64_t>>("window")          \
      .Attr<ffi::Span<const int64_t>>("strides")     \
      .Attr<ffi::Span<const int64_t>>("padding")

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_max_pool_fwd, jaxcnn::MaxPoolFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>() JAXCNN_POOL_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_max_pool_bwd, jaxcnn::MaxPoolBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXCNN_POOL_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_avg_pool_fwd, jaxcnn::AvgPoolFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXCNN_POOL_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_avg_pool_bwd, jaxcnn::AvgPoolBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXCNN_POOL_ATTRS);

#pragma GCC visibility pop
