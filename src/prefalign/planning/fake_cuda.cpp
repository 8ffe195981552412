// prefalign.planning's fake-CUDA shim for a CPU-only torch build (see shim.py).
//
// Registers (1) c10's FakeGuardImpl<CUDA> as the CUDA device guard, so autograd and streams over
// fake `cuda` tensors find a guard, and (2) a CUDAHooksInterface that reports CUDA present with
// PREFALIGN_FAKE_CUDA_DEVICES devices (default 8), so at::globalContext().hasCUDA() and
// "Cannot access accelerator" checks pass. No memory is ever allocated on a "CUDA" device: the
// planner only creates CUDA tensors inside FakeTensorMode. Must be loaded (RTLD_GLOBAL) before torch
// is imported, because torch caches the hooks on first use.
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

#include <cstdlib>

namespace {

c10::DeviceIndex fake_device_count() {
  const char* value = std::getenv("PREFALIGN_FAKE_CUDA_DEVICES");
  int count = value ? std::atoi(value) : 8;
  return static_cast<c10::DeviceIndex>(count > 0 ? count : 8);
}

struct FakeCUDAHooks final : at::CUDAHooksInterface {
  explicit FakeCUDAHooks(at::CUDAHooksArgs) {}
  bool hasCUDA() const override { return true; }
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return fake_device_count(); }
  int getNumGPUs() const override { return fake_device_count(); }
  c10::DeviceIndex current_device() const override { return 0; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  void init() const override {}
};

}  // namespace

C10_REGISTER_GUARD_IMPL(CUDA, c10::impl::FakeGuardImpl<c10::DeviceType::CUDA>);
namespace at {
C10_REGISTER_TYPED_CLASS(CUDAHooksRegistry, "CUDAHooks", FakeCUDAHooks);
}  // namespace at

extern "C" int prefalign_fake_cuda_devices() { return fake_device_count(); }
