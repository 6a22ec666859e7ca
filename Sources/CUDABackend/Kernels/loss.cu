// loss.cu: cross-entropy over the vocabulary for a chunk of rows (CPU twin: CPUOps.crossEntropy). logits are
// (rows, V) in T and are overwritten with dlogits = (softmax − onehot) · scale when writeGrad is set, so no float32
// copy of the logits is ever made; each row's loss goes to rowLoss (0 for an ignored row), summed by the host in a
// fixed order so the loss is the same on every run. One thread block per row; a target of −100 counts for nothing
// (its gradient row is zero).
#include "common.cuh"

extern "C" __global__ void cross_entropy(T* logits, float* rowLoss, const int* targets, int rows, int vocab,
                                         float scale, int writeGrad) {
    long long r = blockIdx.x;
    T* row = logits + r * vocab;
    int target = targets[r];
    if (target < 0) {
        if (threadIdx.x == 0) rowLoss[r] = 0.0f;
        if (writeGrad) for (int j = threadIdx.x; j < vocab; j += blockDim.x) row[j] = st(0.0f);
        return;
    }
    float xt = ld(row[target]);
    float m = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, ld(row[j]));
    m = block_max(m);
    float z = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) z += expf(ld(row[j]) - m);
    z = block_sum(z);
    float logZ = m + logf(z);
    if (threadIdx.x == 0) rowLoss[r] = logZ - xt;
    if (writeGrad) {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            float d = expf(ld(row[j]) - logZ) * scale;
            row[j] = st(j == target ? d - scale : d);
        }
    }
}
