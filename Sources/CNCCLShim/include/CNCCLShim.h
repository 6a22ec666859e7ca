// CNCCLShim: the one NCCL call Swift cannot make through a dlsym'd function pointer, because it takes the
// 128-byte ncclUniqueId by value (a C struct passed on the stack). Everything else goes through NCCL.swift.
#ifndef QLORA_CNCCLSHIM_H
#define QLORA_CNCCLSHIM_H

/// Calls `ncclCommInitRank(comm, nranks, *uniqueId, rank)` through the function pointer `function` (resolved with
/// dlsym); `uniqueId` points to the 128 bytes ncclGetUniqueId wrote. Returns NCCL's status.
int qlora_nccl_comm_init_rank(void *function, void **comm, int nranks, const void *uniqueId, int rank);

#endif
