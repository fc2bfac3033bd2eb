#include "common.h"

namespace jaxcnn {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  static dnnl::stream stream(Engine());
  return stream;
}

std::unique_lock<std::mutex> ExecLock() {
  static std::mutex mutex;
  return std::unique_lock<std::mutex>(mutex);
}

std::string Key(const char* kind, const std::vector<int64_t>& values) {
  std::string key(kind);
  for (int64_t v : values) key += "," + std::to_string(v);
  return key;
}

Stage::Stage(const memory::desc& user_md, const memory::desc& inner_md, bool is_input)
    : user(user_md, Engine(), DNNL_MEMORY_NONE), input(is_input) {
  if (user_md == inner_md) {
    inner = user;
  } else {
    inner = memory(inner_md, Engine());
    reorder = is_input ? dnnl::reorder(user, inner) : dnnl::reorder(inner, user);
  }
}

memory Scratchpad(const memory::desc& md) { return memory(md, Engine()); }

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

memory::desc Nhwc(int64_t n, int64_t h, int64_t w, int64_t c, Dt dt) {
  return memory::desc({n, c, h, w}, dt, Tag::nhwc);
}

ffi::Error Invalid(const char* what, const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(what) + ": " + message);
}

}  // namespace jaxcnn
