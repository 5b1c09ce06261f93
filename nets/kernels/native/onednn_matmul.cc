// Matrix products on oneDNN (the kernels PyTorch's CPU matmuls run), as an XLA FFI handler for
// JAX's CPU backend: nets/kernels/onednn_matmul.py calls it, nets/kernels/onednn_conv.py builds
// it into the one oneDNN library beside the convolutions.
//
// Operands are row-major buffers of any rank, read as matrices: a's first `split_a` axes form
// its rows, the rest its columns (likewise b with `split_b`); `trans_a` / `trans_b` say that a
// matrix is stored transposed, which oneDNN reads through strides, so no operand is copied.
// The result is the float32 (M, N) product of (M, K) by (K, N), for float32 or bfloat16
// operands (bfloat16 accumulating in float32, on AVX512-BF16 or AMX where the CPU has them).
// Primitives are created once per shape and kept; each call takes its scratch memory from the
// calling thread's buffer (onednn_conv.cc's, shared).

#include <omp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

// Defined in onednn_conv.cc, built into the same library.
namespace deepnets_onednn {
void* ThreadScratch(size_t bytes);
dnnl::engine& Engine();
}  // namespace deepnets_onednn

namespace {

using deepnets_onednn::Engine;
using deepnets_onednn::ThreadScratch;

struct Matmul {
  dnnl::matmul primitive;
  memory::desc a, b, c, scratchpad;
};

std::mutex cache_mutex;
// One product at a time: each runs on all the cores' OpenMP threads, and two at once (XLA runs
// independent products concurrently) would put two teams on the same cores.
std::mutex run_mutex;

std::shared_ptr<Matmul> GetMatmul(memory::data_type type, int64_t m, int64_t k, int64_t n,
                                  bool trans_a, bool trans_b) {
  static auto* cache = new std::map<std::vector<int64_t>, std::shared_ptr<Matmul>>();
  std::vector<int64_t> key = {static_cast<int64_t>(type), m, k, n, trans_a, trans_b};
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = cache->find(key);
  if (found != cache->end()) return found->second;
  auto matmul = std::make_shared<Matmul>();
  matmul->a = memory::desc({m, k}, type, trans_a ? memory::dims{1, m} : memory::dims{k, 1});
  matmul->b = memory::desc({k, n}, type, trans_b ? memory::dims{1, k} : memory::dims{n, 1});
  matmul->c = memory::desc({m, n}, memory::data_type::f32, memory::dims{n, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::matmul::primitive_desc desc(Engine(), matmul->a, matmul->b, matmul->c, attr);
  matmul->primitive = dnnl::matmul(desc);
  matmul->scratchpad = desc.scratchpad_desc();
  (*cache)[key] = matmul;
  return matmul;
}

int64_t Product(ffi::Span<const int64_t> dims, size_t begin, size_t end) {
  return std::accumulate(dims.begin() + begin, dims.begin() + end, int64_t{1},
                         std::multiplies<int64_t>());
}

ffi::Error Run(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
               int64_t split_a, int64_t split_b, int64_t trans_a, int64_t trans_b,
               int64_t threads) {
  auto a_dims = a.dimensions(), b_dims = b.dimensions();
  if (split_a < 0 || split_a > static_cast<int64_t>(a_dims.size()) || split_b < 0 ||
      split_b > static_cast<int64_t>(b_dims.size()))
    return ffi::Error::InvalidArgument("onednn_matmul: split outside the operand's rank");
  int64_t a_rows = Product(a_dims, 0, split_a), a_cols = Product(a_dims, split_a, a_dims.size());
  int64_t b_rows = Product(b_dims, 0, split_b), b_cols = Product(b_dims, split_b, b_dims.size());
  int64_t m = trans_a ? a_cols : a_rows, k = trans_a ? a_rows : a_cols;
  int64_t n = trans_b ? b_rows : b_cols;
  if ((trans_b ? b_cols : b_rows) != k)
    return ffi::Error::InvalidArgument("onednn_matmul: the contracted sizes differ");
  if (a.element_type() != b.element_type() || out->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("onednn_matmul: operands of one dtype, float32 result");
  memory::data_type type;
  if (a.element_type() == ffi::DataType::F32) type = memory::data_type::f32;
  else if (a.element_type() == ffi::DataType::BF16) type = memory::data_type::bf16;
  else return ffi::Error::InvalidArgument("onednn_matmul: float32 or bfloat16 operands only");
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  try {
    auto matmul = GetMatmul(type, m, k, n, trans_a != 0, trans_b != 0);
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory a_memory(matmul->a, engine, a.untyped_data());
    memory b_memory(matmul->b, engine, b.untyped_data());
    memory c_memory(matmul->c, engine, out->untyped_data());
    memory scratchpad(matmul->scratchpad, engine,
                      ThreadScratch(matmul->scratchpad.get_size()));
    std::lock_guard<std::mutex> lock(run_mutex);
    matmul->primitive.execute(stream, {{DNNL_ARG_SRC, a_memory}, {DNNL_ARG_WEIGHTS, b_memory},
                                       {DNNL_ARG_DST, c_memory},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_matmul: oneDNN error: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMatmul, Run,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("split_a")
                                  .Attr<int64_t>("split_b")
                                  .Attr<int64_t>("trans_a")
                                  .Attr<int64_t>("trans_b")
                                  .Attr<int64_t>("threads"));
