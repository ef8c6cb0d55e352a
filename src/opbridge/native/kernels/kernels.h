// Registration hooks of the kernels shipped in opbridge's native library.
#pragma once

#include <opbridge/ort_kernel.h>

namespace opbridge::kernels {

void AddCustomOps(OpList& ops);  // test.customop::CustomOpOne, CustomOpTwo
void AddGroupNorm(OpList& ops);  // mydomain::testgroupnorm

}  // namespace opbridge::kernels
