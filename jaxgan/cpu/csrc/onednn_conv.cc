// oneDNN 2-D convolutions as XLA FFI handlers for JAX's CPU backend (jaxgan.cpu.onednn builds
// and registers them). Activations NHWC, kernels HWIO (flax's layouts), float32. Three handlers,
// the three products of a convolution z = C_W(u):
//   jaxgan_conv_forward           (u, W) -> z
//   jaxgan_conv_backward_data     (g, W) -> C_W^T g        (the gradient with respect to u)
//   jaxgan_conv_backward_weights  (u, g) -> d<g, C_W(u)>/dW
// Attributes: strides [2], pads [lo_h, hi_h, lo_w, hi_w], dilation [2] (lax's: 1 = none).
// A primitive per geometry is made once and cached; the kernel is reordered into the layout the
// primitive asks for (and a weight gradient back into HWIO) in per-thread scratch memory.
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using Dims = ffi::Span<const int64_t>;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

enum Op { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  memory::dims src, wei, dst, strides, dil, pl, pr;
  std::string Key(int op) const {
    std::string k = std::to_string(op);
    for (const auto* d : {&src, &wei, &dst, &strides, &dil, &pl, &pr})
      for (auto v : *d) k += "," + std::to_string(v);
    return k;
  }
};

// src [N,H,W,C], wei [KH,KW,C,O], dst [N,OH,OW,O] as XLA lays them out; lax dilation d is oneDNN's d - 1.
Geometry Geo(Dims src, Dims wei, Dims dst, Dims strides, Dims pads, Dims dilation) {
  Geometry g;
  g.src = {src[0], src[3], src[1], src[2]};
  g.wei = {wei[3], wei[2], wei[0], wei[1]};
  g.dst = {dst[0], dst[3], dst[1], dst[2]};
  g.strides = {strides[0], strides[1]};
  g.dil = {dilation[0] - 1, dilation[1] - 1};
  g.pl = {pads[0], pads[2]};
  g.pr = {pads[1], pads[3]};
  return g;
}

// One convolution primitive for a geometry, with the kernel layout it wants.
struct Plan {
  memory::desc src, wei_user, wei, dst, scratch;
  dnnl::primitive prim;
  bool reorder_wei = false;
  dnnl::primitive to_wei, from_wei;  // user kernel -> primitive's, primitive's -> user (weight gradient)
};

std::shared_ptr<Plan> MakePlan(const Geometry& g, int op) {
  auto& eng = Engine();
  auto p = std::make_shared<Plan>();
  p->src = memory::desc(g.src, dt::f32, tag::nhwc);
  p->dst = memory::desc(g.dst, dt::f32, tag::nhwc);
  p->wei_user = memory::desc(g.wei, dt::f32, tag::hwio);
  memory::desc wei_any(g.wei, dt::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc fwd(eng, dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, p->src, wei_any, p->dst, g.strides, g.dil, g.pl, g.pr, attr);
  if (op == kForward) {
    p->wei = fwd.weights_desc();
    p->scratch = fwd.scratchpad_desc();
    p->prim = dnnl::convolution_forward(fwd);
  } else if (op == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc bwd(eng, dnnl::algorithm::convolution_direct, p->src,
        wei_any, p->dst, g.strides, g.dil, g.pl, g.pr, fwd, attr);
    p->wei = bwd.weights_desc();
    p->scratch = bwd.scratchpad_desc();
    p->prim = dnnl::convolution_backward_data(bwd);
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(eng, dnnl::algorithm::convolution_direct, p->src,
        wei_any, p->dst, g.strides, g.dil, g.pl, g.pr, fwd, attr);
    p->wei = bwd.diff_weights_desc();
    p->scratch = bwd.scratchpad_desc();
    p->prim = dnnl::convolution_backward_weights(bwd);
  }
  p->reorder_wei = p->wei != p->wei_user;
  if (p->reorder_wei) {
    if (op == kBackwardWeights) {
      p->from_wei = dnnl::reorder(dnnl::reorder::primitive_desc(eng, p->wei, eng, p->wei_user));
    } else {
      p->to_wei = dnnl::reorder(dnnl::reorder::primitive_desc(eng, p->wei_user, eng, p->wei));
    }
  }
  return p;
}

std::shared_ptr<Plan> GetPlan(const Geometry& g, int op) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  std::string key = g.Key(op);
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  auto p = MakePlan(g, op);
  plans.emplace(key, p);
  return p;
}

// Per-thread scratch (XLA may run several convolutions at once, each on its own thread).
void* Scratch(int slot, size_t bytes) {
  thread_local std::vector<char> buf[2];
  if (buf[slot].size() < bytes) buf[slot].resize(bytes);
  return buf[slot].data();
}

ffi::Error Execute(int op, float* src, float* wei, float* dst, Dims src_d, Dims wei_d, Dims dst_d, Dims strides,
                   Dims pads, Dims dilation) {
  if (src_d.size() != 4 || wei_d.size() != 4 || dst_d.size() != 4 || strides.size() != 2 || pads.size() != 4 ||
      dilation.size() != 2) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxgan oneDNN convolution: 2-D only (rank-4 NHWC / HWIO buffers, 2 strides, 4 pads)");
  }
  try {
    Geometry g = Geo(src_d, wei_d, dst_d, strides, pads, dilation);
    auto p = GetPlan(g, op);
    auto& eng = Engine();
    dnnl::stream s(eng);
    memory src_m(p->src, eng, src), dst_m(p->dst, eng, dst), wei_user(p->wei_user, eng, wei);
    memory wei_m = p->reorder_wei ? memory(p->wei, eng, Scratch(0, p->wei.get_size())) : wei_user;
    memory scratch(p->scratch, eng, Scratch(1, p->scratch.get_size()));
    if (op == kForward) {
      if (p->reorder_wei) p->to_wei.execute(s, {{DNNL_ARG_FROM, wei_user}, {DNNL_ARG_TO, wei_m}});
      p->prim.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DST, dst_m},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (op == kBackwardData) {
      if (p->reorder_wei) p->to_wei.execute(s, {{DNNL_ARG_FROM, wei_user}, {DNNL_ARG_TO, wei_m}});
      p->prim.execute(s, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DIFF_DST, dst_m},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      p->prim.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, wei_m}, {DNNL_ARG_DIFF_DST, dst_m},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
      if (p->reorder_wei) p->from_wei.execute(s, {{DNNL_ARG_FROM, wei_m}, {DNNL_ARG_TO, wei_user}});
    }
    s.wait();
    return ffi::Error::Success();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jaxgan oneDNN convolution: ") + e.what());
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> z, Dims strides,
                   Dims pads, Dims dilation) {
  return Execute(kForward, u.typed_data(), w.typed_data(), z->typed_data(), u.dimensions(), w.dimensions(),
                 z->dimensions(), strides, pads, dilation);
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> du,
                        Dims strides, Dims pads, Dims dilation) {
  return Execute(kBackwardData, du->typed_data(), w.typed_data(), g.typed_data(), du->dimensions(), w.dimensions(),
                 g.dimensions(), strides, pads, dilation);
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw,
                           Dims strides, Dims pads, Dims dilation) {
  return Execute(kBackwardWeights, u.typed_data(), dw->typed_data(), g.typed_data(), u.dimensions(),
                 dw->dimensions(), g.dimensions(), strides, pads, dilation);
}

}  // namespace

#define JAXGAN_BIND()                                                                                   \
  ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() \
      .Attr<Dims>("strides").Attr<Dims>("pads").Attr<Dims>("dilation")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganConvForward, Forward, JAXGAN_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganConvBackwardData, BackwardData, JAXGAN_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxganConvBackwardWeights, BackwardWeights, JAXGAN_BIND());
