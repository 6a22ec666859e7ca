#!/usr/bin/env python3
"""Compiles one of Sources/CUDABackend/Kernels/*.cu with NVRTC for sm_90a, as the Swift side does, and prints for each
named kernel what ptxas reports (registers, spills, shared memory) and the static instruction count of each loop of its
SASS (a backward branch and what lies between): a way to see on a machine without a GPU what a change does to a
kernel's instructions a step. Needs `pip install nvidia-cuda-nvrtc nvidia-cuda-cuobjdump` (the CUDA 13 wheels).

Usage: python3 scripts/kernel-sass.py Sources/CUDABackend/Kernels/lora.cu lora_dx [more kernels] [--f32] [--dump DIR]
"""
import argparse, ctypes, glob, os, re, subprocess, sys

def nvidia_dir():
    for p in sys.path:
        for d in glob.glob(os.path.join(p, 'nvidia', 'cu13')):
            if glob.glob(os.path.join(d, 'lib', 'libnvrtc.so*')): return d
    sys.exit('NVRTC not found: pip install nvidia-cuda-nvrtc nvidia-cuda-cuobjdump')

def compile_cubin(source, bf16, root):
    lib = ctypes.CDLL(sorted(glob.glob(os.path.join(root, 'lib', 'libnvrtc.so*')))[0])
    folder = os.path.dirname(source)
    headers = {os.path.basename(h): open(h).read() for h in glob.glob(os.path.join(folder, '*.cuh'))}
    names = [k.encode() for k in headers]; bodies = [v.encode() for v in headers.values()]
    prog = ctypes.c_void_p(); n = len(headers)
    lib.nvrtcCreateProgram(ctypes.byref(prog), open(source).read().encode(), b'kernel.cu', n,
                           (ctypes.c_char_p * n)(*bodies), (ctypes.c_char_p * n)(*names))
    options = ['--gpu-architecture=sm_90a', '--std=c++17', f'-DQLORA_BF16={1 if bf16 else 0}', '--fmad=true',
               '-I' + os.path.join(root, 'include'), '--ptxas-options=-v', '-default-device']
    encoded = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    result = lib.nvrtcCompileProgram(prog, len(options), encoded)
    size = ctypes.c_size_t(); lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value); lib.nvrtcGetProgramLog(prog, log)
    if result != 0: sys.exit(log.value.decode())
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value); lib.nvrtcGetCUBIN(prog, cubin)
    return log.value.decode(), cubin.raw

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('source'); parser.add_argument('kernels', nargs='+')
    parser.add_argument('--f32', action='store_true', help='the float32 build (QLORA_BF16=0)')
    parser.add_argument('--dump', help='write each kernel\'s SASS to DIR/NAME.sass')
    args = parser.parse_args()
    root = nvidia_dir()
    log, cubin = compile_cubin(args.source, not args.f32, root)
    path = '/tmp/kernel-sass.cubin'
    open(path, 'wb').write(cubin)
    for kernel in args.kernels:
        info = re.search(r"entry function '%s'.*?Used[^\n]*" % re.escape(kernel), log, re.S)
        print(f'== {kernel}')
        if info: print('\n'.join(l.strip() for l in info.group(0).splitlines() if 'spill' in l or 'Used' in l))
        sass = subprocess.run([os.path.join(root, 'bin', 'cuobjdump'), '-sass', '-fun', kernel, path],
                              capture_output=True, text=True).stdout
        if args.dump:
            os.makedirs(args.dump, exist_ok=True); open(os.path.join(args.dump, kernel + '.sass'), 'w').write(sass)
        ins = [(int(m.group(1), 16), m.group(2)) for m in
               re.finditer(r'/\*([0-9a-f]{4,})\*/\s+([^;]*);', sass)]
        print(f'instructions: {len(ins)}')
        for at, text in ins:
            target = re.search(r'BRA(?:\.U)? (0x[0-9a-f]+)', text)
            if target and int(target.group(1), 16) < at:
                start = int(target.group(1), 16)
                count = sum(1 for a, _ in ins if start <= a <= at)
                print(f'loop {start:#x}..{at:#x}: {count} instructions')

if __name__ == '__main__':
    main()
