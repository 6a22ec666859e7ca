import Quantization
import Tensors

/// The layout of a pre-quantized bitsandbytes 4-bit checkpoint (what transformers saves after loading a model with
/// `BitsAndBytesConfig(load_in_4bit=True)`): each quantized linear weight `W.weight` becomes
/// - `W.weight`: U8 `[ceil(n/2), 1]`, the packed codes;
/// - `W.weight.absmax`: F32 per block, or with double quantization U8 codes of the centred absmax values;
/// - `W.weight.quant_map`: F32 `[16]`, the 4-bit code book;
/// - with double quantization `W.weight.nested_absmax` (F32 per 256 scales) and `W.weight.nested_quant_map`
///   (F32 `[256]`, the signed dynamic map);
/// - `W.weight.quant_state.bitsandbytes__nf4` (or `__fp4`): U8, the UTF-8 bytes of a JSON object with quant_type,
///   blocksize, dtype, shape and, when nested, nested_blocksize, nested_dtype and nested_offset.
public enum BnB4BitCheckpoint {
    /// True for the weights transformers replaces with 4-bit layers in a Llama-family model: the seven projections
    /// of every decoder layer (lm_head is never quantized).
    public static func isQuantizedLinearWeight(_ name: String, shape: [Int]) -> Bool {
        guard shape.count == 2, name.hasPrefix("model.layers."), name.hasSuffix("_proj.weight") else { return false }
        let parts = name.split(separator: ".")
        return parts.count == 6 && Int(parts[2]) != nil && (parts[3] == "self_attn" || parts[3] == "mlp")
    }

    /// The tensors that store `weight` under `name` (e.g. `model.layers.0.mlp.up_proj.weight`).
    public static func tensors(storing weight: Quantized4BitTensor, as name: String) -> [(name: String, tensor: Tensor)] {
        var out: [(String, Tensor)] = [
            (name, Tensor(copying: weight.packed, shape: [weight.packed.count, 1], dtype: .u8)),
            (name + ".quant_map", Tensor(weight.quantType.codeBook, shape: [16])),
        ]
        var state: [(String, JSONValue)] = [
            ("quant_type", .string(weight.quantType.rawValue)),
            ("blocksize", .int(weight.blocksize)),
            ("dtype", .string(weight.dtype.torchName)),
            ("shape", .array(weight.shape.map { .int($0) })),
        ]
        switch weight.scales {
        case .float32(let absmax):
            out.append((name + ".absmax", Tensor(absmax, shape: [absmax.count])))
        case .doubleQuantized(let d):
            out.append((name + ".absmax", Tensor(copying: d.codes, shape: [d.codes.count], dtype: .u8)))
            out.append((name + ".nested_absmax", Tensor(d.nestedAbsmax, shape: [d.nestedAbsmax.count])))
            out.append((name + ".nested_quant_map", Tensor(d.nestedCodeBook, shape: [d.nestedCodeBook.count])))
            state += [
                ("nested_blocksize", .int(d.nestedBlocksize)),
                ("nested_dtype", .string("float32")),
                ("nested_offset", .double(Double(d.offset))),
            ]
        }
        // bitsandbytes packs the state with Python's json.dumps defaults.
        let json = Array(JSONValue.object(state).pythonText().utf8)
        out.append((name + ".quant_state.bitsandbytes__" + weight.quantType.rawValue,
                    Tensor(copying: json, shape: [json.count], dtype: .u8)))
        return out
    }

    /// Most elements a quant_state's shape may describe (2^40; a checkpoint's packed tensor must hold half as many
    /// bytes, so a larger claim cannot be a real file).
    public static let maximumElementCount = 1 << 40

    /// True when `archive` stores `name` as a 4-bit weight.
    public static func isQuantized(_ name: String, in archive: TensorSource) -> Bool {
        archive.contains(name + ".quant_state.bitsandbytes__nf4") || archive.contains(name + ".quant_state.bitsandbytes__fp4")
    }

    /// Reads the 4-bit weight stored under `name`, checking every part against the others.
    public static func readWeight(_ name: String, from archive: TensorSource) throws -> Quantized4BitTensor {
        let location = archive.location
        func fail(_ detail: String) -> ModelFileError {
            ModelFileError.invalidCheckpoint(path: location, tensor: name, detail: detail)
        }
        // A NaN or infinite scale makes its whole block NaN: eval printed "loss nan" and merge wrote the NaN
        // weights before its check refused them.
        func checkFinite(_ values: [Float], _ part: String) throws {
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                throw ModelFileError.invalidCheckpoint(path: location, tensor: name + "." + part,
                                                       detail: "element \(bad) is \(values[bad]), not finite")
            }
        }
        let stateName: String
        let quantType: QuantType
        if archive.contains(name + ".quant_state.bitsandbytes__nf4") {
            (stateName, quantType) = (name + ".quant_state.bitsandbytes__nf4", .nf4)
        } else if archive.contains(name + ".quant_state.bitsandbytes__fp4") {
            (stateName, quantType) = (name + ".quant_state.bitsandbytes__fp4", .fp4)
        } else {
            throw fail("no quant_state.bitsandbytes__nf4 or __fp4 tensor beside it")
        }
        let state: JSONValue
        do { state = try JSONValue(parsing: try archive.tensor(named: stateName).bytesArray()) } catch let e as JSONParseError {
            throw fail("its quant_state is not valid JSON: \(e)")
        }
        guard state["quant_type"]?.stringValue == quantType.rawValue else {
            throw fail("quant_state says quant_type \(state["quant_type"]?.compactText() ?? "nothing"), its name says \(quantType.rawValue)")
        }
        guard let blocksize = state["blocksize"]?.intValue, Quantized4BitTensor.isSupported(blocksize: blocksize) else {
            throw fail("quant_state has blocksize \(state["blocksize"]?.compactText() ?? "nothing"), "
                + "expected a power of two from 32 to 4096")
        }
        guard let dtypeName = state["dtype"]?.stringValue, let dtype = DType(torchName: dtypeName), dtype.isFloatingPoint else {
            throw fail("quant_state has no floating-point dtype")
        }
        guard let shapeValues = state["shape"]?.arrayValue, !shapeValues.isEmpty,
              case let dims = shapeValues.compactMap(\.intValue), dims.count == shapeValues.count,
              dims.allSatisfy({ $0 >= 0 }) else {
            throw fail("quant_state has no valid shape (found \(state["shape"]?.compactText() ?? "nothing"))")
        }
        // The element count, overflow-checked and bounded by what the packed tensor can hold (checked against it
        // below), before anything is computed from it.
        var n = 1
        for d in dims {
            let (product, overflow) = n.multipliedReportingOverflow(by: d)
            guard !overflow, product <= Self.maximumElementCount else {
                throw fail("quant_state shape \(dims) has more elements than this tool accepts " +
                    "(\(Self.maximumElementCount))")
            }
            n = product
        }
        let blockCount = (n + blocksize - 1) / blocksize
        let packedTensor = try archive.tensor(named: name)
        guard packedTensor.dtype == .u8, packedTensor.elementCount == (n + 1) / 2 else {
            throw fail("packed weight is \(packedTensor.dtype.rawValue) \(packedTensor.shape), expected U8 with \((n + 1) / 2) bytes for shape \(dims)")
        }
        let quantMap = try archive.tensor(named: name + ".quant_map")
        guard quantMap.dtype == .f32, quantMap.floats() == quantType.codeBook else {
            throw fail("quant_map is not the \(quantType.rawValue) code book")
        }
        let absmaxTensor = try archive.tensor(named: name + ".absmax")
        guard absmaxTensor.elementCount == blockCount else {
            throw fail("absmax has \(absmaxTensor.elementCount) values, expected \(blockCount) (one per block of \(blocksize))")
        }
        let scales: BlockScales
        if let nestedBlocksize = state["nested_blocksize"]?.intValue {
            guard let offset = state["nested_offset"]?.doubleValue else { throw fail("quant_state has no nested_offset") }
            guard offset.isFinite else { throw fail("quant_state has a non-finite nested_offset") }
            guard nestedBlocksize > 0, nestedBlocksize <= 1 << 20, absmaxTensor.dtype == .u8 else {
                throw fail("double-quantized absmax must be U8 with a nested_blocksize from 1 to 2^20 "
                    + "(found \(absmaxTensor.dtype.rawValue) and \(nestedBlocksize))")
            }
            let nestedAbsmax = try archive.tensor(named: name + ".nested_absmax")
            let nestedMap = try archive.tensor(named: name + ".nested_quant_map")
            let nestedCount = (blockCount + nestedBlocksize - 1) / nestedBlocksize
            guard nestedAbsmax.dtype == .f32, nestedAbsmax.elementCount == nestedCount else {
                throw fail("nested_absmax must be F32 with \(nestedCount) values")
            }
            guard nestedMap.dtype == .f32, nestedMap.elementCount == 256 else {
                throw fail("nested_quant_map must be F32 with 256 values")
            }
            let nested = nestedAbsmax.floats(), nestedCodes = nestedMap.floats()
            try checkFinite(nested, "nested_absmax")
            try checkFinite(nestedCodes, "nested_quant_map")
            scales = .doubleQuantized(DoubleQuantizedScales(
                codes: absmaxTensor.bytesArray(), nestedAbsmax: nested, offset: Float(offset),
                nestedBlocksize: nestedBlocksize, nestedCodeBook: nestedCodes))
        } else {
            guard absmaxTensor.dtype == .f32 else { throw fail("absmax must be F32 without double quantization") }
            let absmax = absmaxTensor.floats()
            try checkFinite(absmax, "absmax")
            scales = .float32(absmax)
        }
        return Quantized4BitTensor(quantType: quantType, blocksize: blocksize, shape: dims, dtype: dtype,
                                   packed: packedTensor.bytesArray(), scales: scales)
    }

    /// The `quantization_config` transformers writes into config.json for these settings.
    public static func quantizationConfig(quantType: QuantType, doubleQuant: Bool, computeDType: DType) -> JSONValue {
        .object([
            ("_load_in_4bit", .bool(true)),
            ("_load_in_8bit", .bool(false)),
            ("bnb_4bit_compute_dtype", .string(computeDType.torchName)),
            ("bnb_4bit_quant_storage", .string("uint8")),
            ("bnb_4bit_quant_type", .string(quantType.rawValue)),
            ("bnb_4bit_use_double_quant", .bool(doubleQuant)),
            ("llm_int8_enable_fp32_cpu_offload", .bool(false)),
            ("llm_int8_has_fp16_weight", .bool(false)),
            ("llm_int8_skip_modules", .null),
            ("llm_int8_threshold", .double(6.0)),
            ("load_in_4bit", .bool(true)),
            ("load_in_8bit", .bool(false)),
            ("quant_method", .string("bitsandbytes")),
        ])
    }
}
