#!/usr/bin/env bash
# Builds llama.cpp's llama-perplexity and llama-cli on the CPU, from the llama.cpp sources vendored in the
# llama-cpp-python sdist on PyPI (pip download), with Debian's cmake: CPU only, -DGGML_NATIVE=ON, -j2.
#
#   bash scripts/build-llama-cpp.sh [DIR]        (default DIR: /tmp/llama-cpp; binaries in DIR/build/bin)
#
# Takes a while on 2 cores (llama-perplexity about 25 minutes; llama-cli, which llama.cpp builds on its server code
# and so needs LLAMA_BUILD_SERVER, more). Installs cmake with apt-get when it is missing.
set -euo pipefail
dir=${1:-/tmp/llama-cpp}
mkdir -p "$dir"
cd "$dir"
if ! command -v cmake > /dev/null; then
    apt-get install -y cmake > apt-cmake.log 2>&1 || { apt-get update > /dev/null && apt-get install -y cmake; }
fi
if ! ls llama_cpp_python-*.tar.gz > /dev/null 2>&1; then
    python3 -m pip download --no-binary :all: --no-deps llama-cpp-python -d .
fi
sdist=$(ls llama_cpp_python-*.tar.gz | head -1)
src=${sdist%.tar.gz}
[ -d "$src" ] || tar xzf "$sdist"
echo "llama.cpp from $sdist ($(cat "$src/vendor/llama.cpp/.git-commit" 2>/dev/null || echo vendored))" >&2
cmake -S "$src/vendor/llama.cpp" -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
    -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > cmake-configure.log
cmake --build build -j2 --target llama-perplexity
cmake --build build -j2 --target llama-cli
ls -la build/bin/llama-perplexity build/bin/llama-cli
