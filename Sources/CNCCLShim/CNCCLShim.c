#include "CNCCLShim.h"
#include <string.h>

typedef struct { char internal[128]; } qlora_nccl_unique_id;   // NCCL_UNIQUE_ID_BYTES = 128
typedef int (*qlora_nccl_comm_init_rank_fn)(void **, int, qlora_nccl_unique_id, int);

int qlora_nccl_comm_init_rank(void *function, void **comm, int nranks, const void *uniqueId, int rank) {
    qlora_nccl_unique_id id;
    memcpy(id.internal, uniqueId, sizeof id.internal);
    return ((qlora_nccl_comm_init_rank_fn)function)(comm, nranks, id, rank);
}
