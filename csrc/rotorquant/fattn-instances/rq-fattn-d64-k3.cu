// Decode kernels of head size 64 with a 3-bit rotor K (every V kind and query group).
#include "../rq-cuda-fattn-decode.cuh"

namespace rq_fa {
RQ_FA_INSTANCE(64, 3)
}
