// Shared pieces of jaxcnn's oneDNN kernels: the engine, the process-wide lock, the primitive cache,
// and the staging of a caller's buffer into the layout and data type a primitive wants.
//
// Every handler takes ExecLock() before it looks anything up or runs anything: XLA runs independent
// custom calls at once on its threads, and each oneDNN call starts an OpenMP team over all the cores,
// so two at once oversubscribe them. Because everything runs under that one lock, the caches and the
// scratch buffers they own need no lock of their own.
#ifndef JAXCNN_CSRC_COMMON_H_
#define JAXCNN_CSRC_COMMON_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace jaxcnn {

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = memory::dims;
using Dt = memory::data_type;
using Tag = memory::format_tag;

dnnl::engine& Engine();
dnnl::stream& Stream();
std::unique_lock<std::mutex> ExecLock();

// A cache key: a kind and every integer that shapes the primitive.
std::string Key(const char* kind, const std::vector<int64_t>& values);

// One cache per primitive kind, keyed by Key(); only touched under ExecLock().
template <class T>
T& Cached(const std::string& key, T (*make)(const std::vector<int64_t>&), const std::vector<int64_t>& v) {
  static std::unordered_map<std::string, std::unique_ptr<T>> cache;
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, std::make_unique<T>(make(v))).first;
  return *it->second;
}

// A caller's buffer (layout `user`) as a primitive sees it (layout `inner`): the same memory when the
// two descriptors agree, else a buffer of its own filled (input) or emptied (output) by a cached reorder.
struct Stage {
  memory user;
  memory inner;
  std::optional<dnnl::reorder> reorder;
  bool input = true;

  Stage() = default;
  Stage(const memory::desc& user_md, const memory::desc& inner_md, bool is_input);
  void Bind(const void* data) { user.set_data_handle(const_cast<void*>(data)); }
  void In() { if (input && reorder) reorder->execute(Stream(), user, inner); }
  void Out() { if (!input && reorder) reorder->execute(Stream(), inner, user); }
};

// The primitive's scratchpad (the attributes ask for scratchpad_mode::user), owned by its cache entry.
memory Scratchpad(const memory::desc& md);
dnnl::primitive_attr UserScratchpad();

// NHWC f32/bf16 activations as oneDNN's logical NCHW dims.
memory::desc Nhwc(int64_t n, int64_t h, int64_t w, int64_t c, Dt dt);

// Wraps a handler body: oneDNN's exceptions become ffi::Error, never an abort.
template <class F>
ffi::Error Guarded(const char* what, F&& body) {
  try {
    return body();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": oneDNN: " + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": " + e.what());
  }
}

ffi::Error Invalid(const char* what, const std::string& message);

// Fills a result with zeros (the gradient of an empty convolution or pooling).
template <ffi::DataType T>
void Zero(ffi::Buffer<T>& buffer) {
  if (buffer.size_bytes() > 0) std::memset(buffer.untyped_data(), 0, buffer.size_bytes());
}

}  // namespace jaxcnn

#endif  // JAXCNN_CSRC_COMMON_H_
