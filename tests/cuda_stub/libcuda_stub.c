/* A stand-in for the CUDA driver (libcuda.so.1) on machines without a GPU, for the CPU-side check of the fused
 * cuDNN graphs (tests/test_cudnn_graphs.py). Every entry point returns CUDA_ERROR_STUB_LIBRARY (34).
 *
 * Why it helps: cuDNN's runtime-fusion engines look the driver up before offering a plan; with no libcuda.so.1
 * at all they report "not supported", so heuristics for a fused graph come back empty. With this library
 * present, heuristics and check_support answer for the device described by a serialized device-property
 * descriptor, and a plan build runs NVRTC up to loading the compiled module, which fails here.
 *
 * What is exported: the entry points cuDNN resolves by name with dlsym (listed below; found by running the
 * check under LD_DEBUG=symbols), and cuGetProcAddress / cuGetProcAddress_v2, through which the CUDA runtime
 * linked into cuDNN and torch resolves every other entry point: they hand out a function that fails. All share
 * one body, int f(void): on x86-64 and aarch64 the caller owns its arguments, so ignoring them is harmless.
 * contres_stub_module_loads() counts attempts to load a compiled module, so a test can tell that a build got
 * that far. A newer cuDNN that resolves another name by dlsym shows up as empty heuristics: add the name here.
 *
 * Build: gcc -shared -fPIC -O2 -o DIR/libcuda.so.1 libcuda_stub.c, then run with LD_LIBRARY_PATH=DIR.
 */
#define STUB_ERROR 34 /* CUDA_ERROR_STUB_LIBRARY */

static int module_loads;

int contres_stub_module_loads(void) { return module_loads; }

static int fail(void) { return STUB_ERROR; }
static int fail_load(void) {
  __atomic_add_fetch(&module_loads, 1, __ATOMIC_RELAXED);
  return STUB_ERROR;
}

int cuGetProcAddress(const char* symbol, void** pfn, int version, unsigned long long flags) {
  (void)symbol;
  (void)version;
  (void)flags;
  *pfn = (void*)fail;
  return 0;
}

int cuGetProcAddress_v2(const char* symbol, void** pfn, int version, unsigned long long flags, int* status) {
  if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
  return cuGetProcAddress(symbol, pfn, version, flags);
}

#define STUB(name) \
  int name(void) { return fail(); }
#define STUB_LOAD(name) \
  int name(void) { return fail_load(); }

STUB(cuInit)
STUB(cuDriverGetVersion)
STUB(cuGetErrorName)
STUB(cuGetErrorString)
STUB(cuDeviceGet)
STUB(cuDeviceGetCount)
STUB(cuDeviceGetAttribute)
STUB(cuDevicePrimaryCtxRetain)
STUB(cuDevicePrimaryCtxRelease)
STUB(cuDevicePrimaryCtxReset)
STUB(cuCtxGetCurrent)
STUB(cuCtxGetDevice)
STUB(cuCtxGetLimit)
STUB(cuCtxPushCurrent)
STUB(cuCtxPopCurrent)
STUB(cuStreamGetCtx)
STUB(cuStreamSynchronize)
STUB(cuMemcpyDtoH_v2)
STUB_LOAD(cuLibraryLoadData)
STUB_LOAD(cuLibraryLoadFromFile)
STUB(cuLibraryUnload)
STUB(cuLibraryGetKernel)
STUB(cuKernelGetAttribute)
STUB(cuKernelSetAttribute)
STUB_LOAD(cuModuleLoadData)
STUB_LOAD(cuModuleLoadDataEx)
STUB_LOAD(cuModuleLoadFatBinary)
STUB(cuModuleUnload)
STUB(cuModuleGetFunction)
STUB(cuModuleGetGlobal_v2)
STUB(cuFuncGetAttribute)
STUB(cuFuncSetAttribute)
STUB(cuLinkCreate)
STUB(cuLinkCreate_v2)
STUB(cuLinkAddData)
STUB(cuLinkAddData_v2)
STUB(cuLinkAddFile_v2)
STUB(cuLinkComplete)
STUB(cuLinkDestroy)
STUB(cuLaunchKernel)
STUB(cuLaunchKernelEx)
STUB(cuLaunchCooperativeKernel)
STUB(cuOccupancyMaxActiveBlocksPerMultiprocessor)
STUB(cuOccupancyMaxPotentialClusterSize)
STUB(cuTensorMapEncodeTiled)
