// What the loaded oneDNN is and which instruction set it runs on, for jaxcnn.onednn.info().
#include "common.h"

namespace {

const char* IsaName(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2_vnni_2: return "avx2_vnni_2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_fp16: return "avx512_core_fp16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "default";
  }
}

}  // namespace

#pragma GCC visibility push(default)  // what jaxcnn.onednn looks up

// The instruction set oneDNN dispatches to on this CPU ("avx512_core_bf16", ...).
extern "C" const char* jaxcnn_onednn_isa() { return IsaName(dnnl::get_effective_cpu_isa()); }

// 1 when oneDNN has native bfloat16 kernels here (AVX512_BF16, AVX2_VNNI_2 or AMX), else 0.
extern "C" int jaxcnn_onednn_has_bf16() {
  auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  auto has = [isa](dnnl::cpu_isa want) { return (isa & static_cast<unsigned>(want)) == static_cast<unsigned>(want); };
  return has(dnnl::cpu_isa::avx512_core_bf16) || has(dnnl::cpu_isa::avx2_vnni_2);
}

// oneDNN's version as major * 10000 + minor * 100 + patch.
extern "C" int jaxcnn_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

#pragma GCC visibility pop
