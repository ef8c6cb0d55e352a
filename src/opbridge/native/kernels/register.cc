// The registration list of opbridge's shipped kernel library.
#include <opbridge/ort_kernel.h>

#include "kernels.h"

OPBRIDGE_REGISTER_OPS(ops) {
  opbridge::kernels::AddCustomOps(ops);
  opbridge::kernels::AddGroupNorm(ops);
}
