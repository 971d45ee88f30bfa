// The Python module rib_ext._C. Importing it loads this shared library, which runs the
// TORCH_LIBRARY registrations of python/ops.cpp and of every kernel file.
#include <pybind11/pybind11.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "rib_ext compiled operators (registered under torch.ops.rib_ext)";
  // Whether the CUDA kernels were compiled in; the Python side reports it (rib_ext.ops.backends()).
  m.def("compiled_with_cuda", []() {
#ifdef RIB_EXT_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("compiled_with_openmp", []() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  });
}
