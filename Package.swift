// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "qlora",
    products: [
        .executable(name: "qlora", targets: ["qlora"]),
        .library(name: "QLoRAKit", targets: ["Tensors", "Quantization", "ModelFiles", "Llama"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    ],
    targets: [
        .target(name: "Tensors"),
        .target(name: "Quantization", dependencies: ["Tensors"]),
        .target(name: "CGEMM"),
        .target(name: "CVector"),
        .target(name: "CPUBackend", dependencies: ["Tensors", "CGEMM"]),
        .target(name: "ModelFiles", dependencies: ["Tensors", "Quantization"]),
        .target(name: "Llama", dependencies: ["Tensors", "Quantization", "ModelFiles", "CPUBackend", "CVector"]),
        .target(name: "Tokenizers", dependencies: ["ModelFiles"]),
        .target(name: "CNCCLShim"),
        .target(name: "CUDABackend", dependencies: ["Tensors", "Quantization", "CNCCLShim"],
                resources: ["common.cuh", "attention.cuh", "quantize.cu", "norm.cu", "rope.cu", "elementwise.cu",
                            "loss.cu", "optimizer.cu", "flash_attention.cu", "flash_attention_sm90.cu", "lora.cu",
                            "decode.cu"]
                    .map { .embedInCode("Kernels/" + $0) }),
        .target(name: "Training", dependencies: ["Tensors", "Quantization", "ModelFiles", "Llama", "Tokenizers",
                                                 "CVector",
                                                 .product(name: "Yams", package: "Yams")]),
        .target(name: "CUDATraining", dependencies: ["CUDABackend", "CPUBackend", "Llama", "Training", "Quantization", "ModelFiles", "Tensors"]),
        .executableTarget(
            name: "qlora",
            dependencies: [
                "Tensors", "Quantization", "ModelFiles", "Llama", "CPUBackend", "Training", "Tokenizers",
                "CUDABackend", "CUDATraining", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "QLoRATests",
            dependencies: ["Tensors", "Quantization", "ModelFiles", "Llama", "CPUBackend", "Training", "Tokenizers",
                           "CUDABackend", "CUDATraining"],
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v5]
)
