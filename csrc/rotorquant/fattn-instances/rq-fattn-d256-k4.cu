// Decode kernels of head size 256 with a 4-bit rotor K (every V kind and query group).
#include "../rq-cuda-fattn-decode.cuh"

namespace rq_fa {
RQ_FA_INSTANCE(256, 4)
}
