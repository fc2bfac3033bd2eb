// Convolution through oneDNN: forward (bias and ReLU fused as post-ops), backward data, and backward
// weights with the bias gradient in the same call. Activations NHWC float32, kernels HWIO float32
// (KH, KW, C / groups, F), as lax.conv_general_dilated with ("NHWC", "HWIO", "NHWC") and
// feature_group_count=groups. With bf16 set, activations and weights are converted to bfloat16 for
// oneDNN's bfloat16 kernels, which accumulate in float32 and write float32.
#include <cstring>
#include <variant>

#include "common.h"

namespace jaxcnn {
namespace {

using dnnl::algorithm;
using dnnl::prop_kind;

// Everything that shapes a convolution, as the integers of its cache key.
struct Geom {
  int64_t n, h, w, c, kh, kw, cg, f, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, g;
  bool bias, relu, bf16, blocked;

  std::vector<int64_t> Values() const {
    return {n, h, w, c, kh, kw, cg, f, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, g, bias, relu, bf16, blocked};
  }
  static Geom From(const std::vector<int64_t>& v) {
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14],
            v[15], v[16], v[17], v[18], v[19] != 0, v[20] != 0, v[21] != 0, v[22] != 0};
  }
  Dt Compute() const { return bf16 ? Dt::bf16 : Dt::f32; }
  Dims Strides() const { return {sh, sw}; }
  Dims Dilates() const { return {dh - 1, dw - 1}; }  // oneDNN counts the holes, not the step
  Dims PadL() const { return {pt, pl}; }
  Dims PadR() const { return {pb, pr}; }
  Dims WeightDims() const {
    return g == 1 ? Dims{f, cg, kh, kw} : Dims{g, f / g, cg, kh, kw};
  }
  // The caller's HWIO kernel, element (kh, kw, i, g * F/G + o), as oneDNN's (G,) O, I, KH, KW dims.
  memory::desc Hwio(Dt dt) const {
    if (g == 1) return memory::desc(WeightDims(), dt, Dims{1, f, kw * cg * f, cg * f});
    return memory::desc(WeightDims(), dt, Dims{f / g, 1, f, kw * cg * f, cg * f});
  }
  memory::desc WeightsFor(Dt dt) const {
    return blocked ? memory::desc(WeightDims(), dt, Tag::any) : Hwio(dt);
  }
  memory::desc Src(Dt dt) const { return Nhwc(n, h, w, c, dt); }
  memory::desc Dst(Dt dt) const { return Nhwc(n, oh, ow, f, dt); }
  memory::desc Bias() const { return memory::desc({f}, Dt::f32, Tag::a); }
};

int64_t OutSize(int64_t in, int64_t k, int64_t s, int64_t lo, int64_t hi, int64_t d) {
  int64_t span = in + lo + hi - ((k - 1) * d + 1);
  return span < 0 ? 0 : span / s + 1;
}

// The attributes shared by the three convolution handlers, read and checked.
struct Attrs {
  ffi::Span<const int64_t> strides, padding, dilation;
  int64_t groups;
  bool bf16, blocked;
};

std::optional<std::string> CheckAttrs(const Attrs& a) {
  if (a.strides.size() != 2 || a.padding.size() != 4 || a.dilation.size() != 2)
    return "strides and dilation need 2 values and padding 4 (top, bottom, left, right)";
  for (int64_t v : a.strides) if (v < 1) return "strides must be positive, got " + std::to_string(v);
  for (int64_t v : a.dilation) if (v < 1) return "dilation must be positive, got " + std::to_string(v);
  for (int64_t v : a.padding) if (v < 0) return "padding must not be negative, got " + std::to_string(v);
  if (a.groups < 1) return "groups must be positive, got " + std::to_string(a.groups);
  return std::nullopt;
}

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

// The geometry of x (N, H, W, C), kernel (KH, KW, C/G, F) and y (N, OH, OW, F), or why they disagree.
std::variant<Geom, std::string> MakeGeom(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                                         ffi::Span<const int64_t> y, const Attrs& a, bool bias, bool relu) {
  if (auto bad = CheckAttrs(a)) return *bad;
  if (x.size() != 4 || k.size() != 4 || y.size() != 4)
    return "x, kernel and y must be 4-D, got " + Shape(x) + ", " + Shape(k) + ", " + Shape(y);
  Geom g{x[0], x[1], x[2], x[3], k[0], k[1], k[2], k[3], y[1], y[2], a.strides[0], a.strides[1],
         a.padding[0], a.padding[1], a.padding[2], a.padding[3], a.dilation[0], a.dilation[1], a.groups,
         bias, relu, a.bf16, a.blocked};
  std::string shapes = "x " + Shape(x) + ", kernel " + Shape(k) + ", y " + Shape(y);
  if (g.c != g.cg * g.g || g.f % g.g != 0)
    return shapes + ": the kernel must be (KH, KW, C/groups, F) with F divisible by groups=" + std::to_string(g.g);
  if (y[0] != g.n || y[3] != g.f || g.oh != OutSize(g.h, g.kh, g.sh, g.pt, g.pb, g.dh) ||
      g.ow != OutSize(g.w, g.kw, g.sw, g.pl, g.pr, g.dw))
    return shapes + ": y does not match the convolution's output shape";
  return g;
}

bool Empty(const Geom& g) { return g.n == 0 || g.oh == 0 || g.ow == 0 || g.f == 0 || g.c == 0; }

dnnl::convolution_forward::primitive_desc ForwardPd(const Geom& g, const memory::desc& src,
                                                    const memory::desc& dst, bool bias,
                                                    const dnnl::primitive_attr& attr) {
  auto wei = g.WeightsFor(g.Compute());
  if (bias)
    return {Engine(), prop_kind::forward_training, algorithm::convolution_direct, src, wei, g.Bias(), dst,
            g.Strides(), g.Dilates(), g.PadL(), g.PadR(), attr};
  return {Engine(), prop_kind::forward_training, algorithm::convolution_direct, src, wei, dst,
          g.Strides(), g.Dilates(), g.PadL(), g.PadR(), attr};
}

// ---- forward -------------------------------------------------------------------------------------

struct Fwd {
  dnnl::convolution_forward prim;
  Stage src, wei;
  memory bias, dst, scratch;
};

Fwd MakeFwd(const std::vector<int64_t>& v) {
  Geom g = Geom::From(v);
  auto attr = UserScratchpad();
  if (g.relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
  }
  auto pd = ForwardPd(g, g.Src(g.Compute()), g.Dst(Dt::f32), g.bias, attr);
  return {dnnl::convolution_forward(pd),
          Stage(g.Src(Dt::f32), pd.src_desc(), true),
          Stage(g.Hwio(Dt::f32), pd.weights_desc(), true),
          memory(g.Bias(), Engine(), DNNL_MEMORY_NONE),
          memory(pd.dst_desc(), Engine(), DNNL_MEMORY_NONE),
          Scratchpad(pd.scratchpad_desc())};
}

ffi::Error ConvFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> b,
                       ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                       ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation, int64_t groups,
                       bool bias, bool relu, bool bf16, bool blocked) {
  const char* what = "jaxcnn_onednn_conv_fwd";
  auto geom = MakeGeom(x.dimensions(), k.dimensions(), y->dimensions(),
                       {strides, padding, dilation, groups, bf16, blocked}, bias, relu);
  if (auto* bad = std::get_if<std::string>(&geom)) return Invalid(what, *bad);
  const Geom& g = std::get<Geom>(geom);
  if (bias && (b.dimensions().size() != 1 || b.dimensions()[0] != g.f))
    return Invalid(what, "bias must be (" + std::to_string(g.f) + ",), got " + Shape(b.dimensions()));
  if (Empty(g)) return ffi::Error::Success();
  return Guarded(what, [&] {
    auto lock = ExecLock();
    Fwd& e = Cached<Fwd>(Key("fwd", g.Values()), MakeFwd, g.Values());
    e.src.Bind(x.typed_data());
    e.wei.Bind(k.typed_data());
    e.dst.set_data_handle(y->typed_data());
    e.src.In();
    e.wei.In();
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.src.inner}, {DNNL_ARG_WEIGHTS, e.wei.inner},
                                         {DNNL_ARG_DST, e.dst}, {DNNL_ARG_SCRATCHPAD, e.scratch}};
    if (bias) {
      e.bias.set_data_handle(b.typed_data());
      args.emplace(DNNL_ARG_BIAS, e.bias);
    }
    e.prim.execute(Stream(), args);
    Stream().wait();
    return ffi::Error::Success();
  });
}

// ---- backward data -------------------------------------------------------------------------------

struct BwdData {
  dnnl::convolution_backward_data prim;
  Stage diff_dst, wei;
  memory diff_src, scratch;
};

BwdData MakeBwdData(const std::vector<int64_t>& v) {
  Geom g = Geom::From(v);
  Dt dt = g.Compute();
  auto hint = ForwardPd(g, g.Src(dt), g.Dst(dt), false, dnnl::primitive_attr());
  dnnl::convolution_backward_data::primitive_desc pd(
      Engine(), algorithm::convolution_direct, g.Src(Dt::f32), g.WeightsFor(dt), g.Dst(dt), g.Strides(),
      g.Dilates(), g.PadL(), g.PadR(), hint, UserScratchpad());
  return {dnnl::convolution_backward_data(pd),
          Stage(g.Dst(Dt::f32), pd.diff_dst_desc(), true),
          Stage(g.Hwio(Dt::f32), pd.weights_desc(), true),
          memory(pd.diff_src_desc(), Engine(), DNNL_MEMORY_NONE),
          Scratchpad(pd.scratchpad_desc())};
}

ffi::Error ConvBwdDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx,
                           ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                           ffi::Span<const int64_t> dilation, int64_t groups, bool bf16, bool blocked) {
  const char* what = "jaxcnn_onednn_conv_bwd_data";
  auto geom = MakeGeom(dx->dimensions(), k.dimensions(), dy.dimensions(),
                       {strides, padding, dilation, groups, bf16, blocked}, false, false);
  if (auto* bad = std::get_if<std::string>(&geom)) return Invalid(what, *bad);
  const Geom& g = std::get<Geom>(geom);
  if (Empty(g)) {
    Zero(*dx);
    return ffi::Error::Success();
  }
  return Guarded(what, [&] {
    auto lock = ExecLock();
    BwdData& e = Cached<BwdData>(Key("bwd_data", g.Values()), MakeBwdData, g.Values());
    e.diff_dst.Bind(dy.typed_data());
    e.wei.Bind(k.typed_data());
    e.diff_src.set_data_handle(dx->typed_data());
    e.diff_dst.In();
    e.wei.In();
    e.prim.execute(Stream(), {{DNNL_ARG_DIFF_DST, e.diff_dst.inner}, {DNNL_ARG_WEIGHTS, e.wei.inner},
                              {DNNL_ARG_DIFF_SRC, e.diff_src}, {DNNL_ARG_SCRATCHPAD, e.scratch}});
    Stream().wait();
    return ffi::Error::Success();
  });
}

// ---- backward weights (and bias) -----------------------------------------------------------------

struct BwdWeights {
  dnnl::convolution_backward_weights prim;
  Stage src, diff_dst, diff_wei;
  memory diff_bias, scratch;
};

BwdWeights MakeBwdWeights(const std::vector<int64_t>& v) {
  Geom g = Geom::From(v);
  Dt dt = g.Compute();
  auto hint = ForwardPd(g, g.Src(dt), g.Dst(dt), g.bias, dnnl::primitive_attr());
  auto wei = g.WeightsFor(Dt::f32);
  auto pd = g.bias ? dnnl::convolution_backward_weights::primitive_desc(
                         Engine(), algorithm::convolution_direct, g.Src(dt), wei, g.Bias(), g.Dst(dt),
                         g.Strides(), g.Dilates(), g.PadL(), g.PadR(), hint, UserScratchpad())
                   : dnnl::convolution_backward_weights::primitive_desc(
                         Engine(), algorithm::convolution_direct, g.Src(dt), wei, g.Dst(dt), g.Strides(),
                         g.Dilates(), g.PadL(), g.PadR(), hint, UserScratchpad());
  return {dnnl::convolution_backward_weights(pd),
          Stage(g.Src(Dt::f32), pd.src_desc(), true),
          Stage(g.Dst(Dt::f32), pd.diff_dst_desc(), true),
          Stage(g.Hwio(Dt::f32), pd.diff_weights_desc(), false),
          memory(g.Bias(), Engine(), DNNL_MEMORY_NONE),
          Scratchpad(pd.scratchpad_desc())};
}

ffi::Error ConvBwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk,
                              ffi::ResultBuffer<ffi::F32> db, ffi::Span<const int64_t> strides,
                              ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation,
                              int64_t groups, bool bias, bool bf16, bool blocked) {
  const char* what = "jaxcnn_onednn_conv_bwd_weights";
  auto geom = MakeGeom(x.dimensions(), dk->dimensions(), dy.dimensions(),
                       {strides, padding, dilation, groups, bf16, blocked}, bias, false);
  if (auto* bad = std::get_if<std::string>(&geom)) return Invalid(what, *bad);
  const Geom& g = std::get<Geom>(geom);
  if (bias && (db->dimensions().size() != 1 || db->dimensions()[0] != g.f))
    return Invalid(what, "the bias gradient must be (" + std::to_string(g.f) + ",), got " +
                             Shape(db->dimensions()));
  if (Empty(g)) {
    Zero(*dk);
    Zero(*db);
    return ffi::Error::Success();
  }
  return Guarded(what, [&] {
    auto lock = ExecLock();
    BwdWeights& e = Cached<BwdWeights>(Key("bwd_weights", g.Values()), MakeBwdWeights, g.Values());
    e.src.Bind(x.typed_data());
    e.diff_dst.Bind(dy.typed_data());
    e.diff_wei.Bind(dk->typed_data());
    e.src.In();
    e.diff_dst.In();
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.src.inner}, {DNNL_ARG_DIFF_DST, e.diff_dst.inner},
                                         {DNNL_ARG_DIFF_WEIGHTS, e.diff_wei.inner},
                                         {DNNL_ARG_SCRATCHPAD, e.scratch}};
    if (bias) {
      e.diff_bias.set_data_handle(db->typed_data());
      args.emplace(DNNL_ARG_DIFF_BIAS, e.diff_bias);
    }
    e.prim.execute(Stream(), args);
    e.diff_wei.Out();
    Stream().wait();
    return ffi::Error::Success();
  });
}

}  // namespace
}  // namespace jaxcnn

namespace ffi = xla::ffi;

#pragma GCC visibility push(default)  // the handlers are what XLA looks up

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_conv_fwd, jaxcnn::ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups")
                                  .Attr<bool>("bias")
                                  .Attr<bool>("relu")
                                  .Attr<bool>("bf16")
                                  .Attr<bool>("blocked"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_conv_bwd_data, jaxcnn::ConvBwdDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups")
                                  .Attr<bool>("bf16")
                                  .Attr<bool>("blocked"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcnn_onednn_conv_bwd_weights, jaxcnn::ConvBwdWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups")
                                  .Attr<bool>("bias")
                                  .Attr<bool>("bf16")
                                  .Attr<bool>("blocked"));

#pragma GCC visibility pop
