// What the CPU build has: OpenMP or not, and how many threads it will use.
#include "../kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace rlaifv {
namespace cpu {

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace cpu
}  // namespace rlaifv
