// 2-D convolutions (forward, input gradient, kernel gradient) on oneDNN, as XLA FFI handlers for
// JAX's CPU backend: nets/kernels/onednn_conv.py builds this file, registers the handlers and
// calls them.
//
// Layouts are JAX's channels-last ones: inputs (N, H, W, C), kernels (KH, KW, C / G, O), outputs
// (N, OH, OW, O), for G groups (feature_group_count; output channel o belongs to group
// o / (O / G), as in lax). oneDNN takes a grouped kernel as 5-D (G, O / G, C / G, KH, KW)
// weights, which JAX's buffer holds in oneDNN's hwigo order. oneDNN reads and writes activations
// in the (nhwc) layout and picks its own blocked layout for the kernel (format_tag::any), into
// and out of which each call reorders the small kernel, as PyTorch's channels-last convolutions
// do. Primitives are created once per
// shape and kept; oneDNN runs them on OpenMP threads, `threads` per call.
//
// XLA may run two of these calls at once (a layer's input and kernel gradients are
// independent), so every primitive takes its scratch memory from the calling thread's own
// buffer (scratchpad_mode::user): oneDNN's default library-managed scratchpad is shared
// between primitives and corrupted results when two ran concurrently.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

#if DNNL_VERSION_MAJOR < 3
#error "nets/kernels/native/onednn_conv.cc needs oneDNN 3 or newer"
#endif

namespace ffi = xla::ffi;
using dnnl::memory;

// Shared with onednn_matmul.cc (one library): the engine and each thread's scratch buffer.
namespace deepnets_onednn {

// This thread's scratch memory for a primitive, at least `bytes` long.
void* ThreadScratch(size_t bytes) {
  thread_local std::vector<char> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

}  // namespace deepnets_onednn

// 1 where this CPU runs oneDNN's bfloat16 convolutions (all three passes) and bfloat16 products
// (float32 result), 0 where oneDNN refuses to create them: oneDNN 3.2 has bfloat16 kernels on
// AVX-512 and up, none on AVX2-only CPUs. nets/kernels/onednn_conv.py asks once
// (`runnable_dtypes`) and keeps bfloat16 work on XLA's kernels where it is 0.
extern "C" int DeepnetsOnednnRunsBfloat16() {
  using type = memory::data_type;
  using tag = memory::format_tag;
  try {
    auto& engine = deepnets_onednn::Engine();
    memory::desc a({16, 16}, type::bf16, tag::ab), c({16, 16}, type::f32, tag::ab);
    dnnl::matmul::primitive_desc product(engine, a, a, c);
    memory::desc x({1, 16, 8, 8}, type::bf16, tag::nhwc), y({1, 16, 8, 8}, type::bf16, tag::nhwc);
    memory::desc w({16, 16, 3, 3}, type::bf16, tag::any);
    memory::dims one = {1, 1};
    dnnl::convolution_forward::primitive_desc forward(
        engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, x, w, y,
        one, one, one);
    dnnl::convolution_backward_data::primitive_desc input_gradient(
        engine, dnnl::algorithm::convolution_direct, x, w, y, one, one, one, forward);
    dnnl::convolution_backward_weights::primitive_desc kernel_gradient(
        engine, dnnl::algorithm::convolution_direct, x, w, y, one, one, one, forward);
  } catch (const dnnl::error&) {
    return 0;
  }
  return 1;
}

namespace {

using deepnets_onednn::Engine;
using deepnets_onednn::ThreadScratch;

enum Pass : int64_t { kForward = 0, kInputGradient = 1, kKernelGradient = 2 };

struct Convolution {
  dnnl::primitive primitive;
  memory::desc input, kernel, output;  // as the primitive reads and writes them
  memory::desc user_kernel;            // (KH, KW, C / G, O): hwio, or hwigo when grouped
  memory::desc scratchpad;
  bool reorder_kernel = false;
  dnnl::reorder kernel_reorder;  // user -> primitive (forward, input gradient) or back
  memory::desc reorder_scratchpad;
};

std::mutex cache_mutex;
std::map<std::vector<int64_t>, std::shared_ptr<Convolution>>& Cache() {
  static auto* cache = new std::map<std::vector<int64_t>, std::shared_ptr<Convolution>>();
  return *cache;
}

// Keeps a pass's primitive with the layouts it reads and writes (x, w, y as in GetConvolution).
void Keep(Convolution& conv, dnnl::primitive primitive, const dnnl::primitive_desc_base& desc,
          memory::desc input, memory::desc kernel, memory::desc output) {
  conv.primitive = primitive;
  conv.scratchpad = desc.scratchpad_desc();
  conv.input = input;
  conv.kernel = kernel;
  conv.output = output;
}

// x: (N, H, W, C), w: (KH, KW, C / G, O), y: (N, OH, OW, O); G = groups.
std::shared_ptr<Convolution> GetConvolution(Pass pass, memory::data_type type,
                                            ffi::Span<const int64_t> x,
                                            ffi::Span<const int64_t> w,
                                            ffi::Span<const int64_t> y,
                                            ffi::Span<const int64_t> strides,
                                            ffi::Span<const int64_t> padding_lo,
                                            ffi::Span<const int64_t> padding_hi, int64_t groups) {
  std::vector<int64_t> key = {pass, static_cast<int64_t>(type), groups};
  for (auto dims : {x, w, y, strides, padding_lo, padding_hi}) key.insert(key.end(), dims.begin(), dims.end());
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = Cache().find(key);
  if (found != Cache().end()) return found->second;

  auto& engine = Engine();
  memory::desc input({x[0], x[3], x[1], x[2]}, type, memory::format_tag::nhwc);
  memory::desc output({y[0], y[3], y[1], y[2]}, type, memory::format_tag::nhwc);
  memory::dims kernel_dims = groups == 1
      ? memory::dims{w[3], w[2], w[0], w[1]}
      : memory::dims{groups, w[3] / groups, w[2], w[0], w[1]};
  memory::desc any_kernel(kernel_dims, type, memory::format_tag::any);
  memory::dims stride_dims = {strides[0], strides[1]};
  memory::dims lo = {padding_lo[0], padding_lo[1]}, hi = {padding_hi[0], padding_hi[1]};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc forward(
      engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, input,
      any_kernel, output, stride_dims, lo, hi, attr);

  auto conv = std::make_shared<Convolution>();
  conv->user_kernel = memory::desc(
      kernel_dims, type, groups == 1 ? memory::format_tag::hwio : memory::format_tag::hwigo);
  if (pass == kForward) {
    Keep(*conv, dnnl::convolution_forward(forward), forward, forward.src_desc(),
         forward.weights_desc(), forward.dst_desc());
  } else if (pass == kInputGradient) {
    dnnl::convolution_backward_data::primitive_desc backward(
        engine, dnnl::algorithm::convolution_direct, input, any_kernel, output, stride_dims, lo,
        hi, forward, attr);
    Keep(*conv, dnnl::convolution_backward_data(backward), backward, backward.diff_src_desc(),
         backward.weights_desc(), backward.diff_dst_desc());
  } else {
    dnnl::convolution_backward_weights::primitive_desc backward(
        engine, dnnl::algorithm::convolution_direct, input, any_kernel, output, stride_dims, lo,
        hi, forward, attr);
    Keep(*conv, dnnl::convolution_backward_weights(backward), backward, backward.src_desc(),
         backward.diff_weights_desc(), backward.diff_dst_desc());
  }
  conv->reorder_kernel = conv->kernel != conv->user_kernel;
  if (conv->reorder_kernel) {
    auto reorder = pass == kKernelGradient
        ? dnnl::reorder::primitive_desc(engine, conv->kernel, engine, conv->user_kernel, attr)
        : dnnl::reorder::primitive_desc(engine, conv->user_kernel, engine, conv->kernel, attr);
    conv->kernel_reorder = dnnl::reorder(reorder);
    conv->reorder_scratchpad = reorder.scratchpad_desc();
  }
  Cache()[key] = conv;
  return conv;
}

ffi::Error Run(Pass pass, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer out,
               ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding_lo,
               ffi::Span<const int64_t> padding_hi, int64_t groups, int64_t threads) {
  // The forward pass reads (x, w) and writes y; the input gradient reads (dy, w), writes dx;
  // the kernel gradient reads (x, dy), writes dw.
  ffi::AnyBuffer x = pass == kInputGradient ? out : a;
  ffi::AnyBuffer w = pass == kKernelGradient ? out : b;
  ffi::AnyBuffer y = pass == kForward ? out : (pass == kInputGradient ? a : b);
  if (x.dimensions().size() != 4 || w.dimensions().size() != 4 || y.dimensions().size() != 4 ||
      strides.size() != 2 || padding_lo.size() != 2 || padding_hi.size() != 2)
    return ffi::Error::InvalidArgument("onednn_conv: 2-D convolutions only (rank-4 operands)");
  if (groups < 1 || x.dimensions()[3] != w.dimensions()[2] * groups ||
      y.dimensions()[3] % groups != 0)
    return ffi::Error::InvalidArgument(
        "onednn_conv: the groups must divide the output channels, and the input channels must "
        "be the kernel's times the groups");
  if (a.element_type() != b.element_type() || a.element_type() != out.element_type())
    return ffi::Error::InvalidArgument("onednn_conv: operands and result of different dtypes");
  memory::data_type type;
  if (a.element_type() == ffi::DataType::F32) type = memory::data_type::f32;
  else if (a.element_type() == ffi::DataType::BF16) type = memory::data_type::bf16;
  else return ffi::Error::InvalidArgument("onednn_conv: float32 or bfloat16 only");
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  try {
    auto conv = GetConvolution(pass, type, x.dimensions(), w.dimensions(), y.dimensions(),
                               strides, padding_lo, padding_hi, groups);
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory input(conv->input, engine, x.untyped_data());
    memory output(conv->output, engine, y.untyped_data());
    memory user_kernel(conv->user_kernel, engine, w.untyped_data());
    memory kernel = conv->reorder_kernel ? memory(conv->kernel, engine) : user_kernel;
    // One buffer serves the primitive and the reorder: they run one after the other.
    size_t scratch_bytes = std::max(conv->scratchpad.get_size(),
                                    conv->reorder_kernel ? conv->reorder_scratchpad.get_size() : 0);
    void* scratch = ThreadScratch(scratch_bytes);
    memory scratchpad(conv->scratchpad, engine, scratch);
    auto reorder_kernel = [&](memory& from, memory& to) {
      memory reorder_scratchpad(conv->reorder_scratchpad, engine, scratch);
      conv->kernel_reorder.execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                            {DNNL_ARG_SCRATCHPAD, reorder_scratchpad}});
    };
    if (pass == kForward) {
      if (conv->reorder_kernel) reorder_kernel(user_kernel, kernel);
      conv->primitive.execute(stream, {{DNNL_ARG_SRC, input}, {DNNL_ARG_WEIGHTS, kernel},
                                       {DNNL_ARG_DST, output}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (pass == kInputGradient) {
      if (conv->reorder_kernel) reorder_kernel(user_kernel, kernel);
      conv->primitive.execute(stream, {{DNNL_ARG_DIFF_DST, output}, {DNNL_ARG_WEIGHTS, kernel},
                                       {DNNL_ARG_DIFF_SRC, input},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      conv->primitive.execute(stream, {{DNNL_ARG_SRC, input}, {DNNL_ARG_DIFF_DST, output},
                                       {DNNL_ARG_DIFF_WEIGHTS, kernel},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (conv->reorder_kernel) reorder_kernel(kernel, user_kernel);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_conv: oneDNN error: ") + e.what());
  }
  return ffi::Error::Success();
}

#define DEFINE_PASS(name, pass)                                                              \
  ffi::Error name(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,      \
                  ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding_lo,    \
                  ffi::Span<const int64_t> padding_hi, int64_t groups, int64_t threads) {   \
    return Run(pass, a, b, *out, strides, padding_lo, padding_hi, groups, threads);          \
  }
DEFINE_PASS(Forward, kForward)
DEFINE_PASS(InputGradient, kInputGradient)
DEFINE_PASS(KernelGradient, kKernelGradient)

}  // namespace

#define BINDING                                                                   \
  ffi::Ffi::Bind()                                                                \
      .Arg<ffi::AnyBuffer>()                                                      \
      .Arg<ffi::AnyBuffer>()                                                      \
      .Ret<ffi::AnyBuffer>()                                                      \
      .Attr<ffi::Span<const int64_t>>("strides")                                  \
      .Attr<ffi::Span<const int64_t>>("padding_lo")                               \
      .Attr<ffi::Span<const int64_t>>("padding_hi")                               \
      .Attr<int64_t>("groups")                                                    \
      .Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward, BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvInputGradient, InputGradient, BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvKernelGradient, KernelGradient, BINDING);
