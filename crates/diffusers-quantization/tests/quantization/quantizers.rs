//! The quantizers against bitsandbytes 0.50.2 on CPU (`quantize_4bit`/`dequantize_4bit`) and
//! against the documented int8/fp8 formulas computed by PyTorch (fixtures/quantization/
//! quantizers.*, oracle stage `quantization`): packed bytes and scales bit-equal, dequantized
//! values bit-equal.

use diffusers_core::testing::Fixture;
use diffusers_quantization::bnb_4bit::{
    Absmax, Bnb4bit, Bnb4bitType, FP4_CODE, NF4_CODE, dynamic_map, quantize_blockwise,
};
use diffusers_quantization::fp8::{Fp8E4m3, Fp8Granularity};
use diffusers_quantization::int8::Int8Rowwise;

fn fixture() -> Fixture {
    Fixture::open("quantization/quantizers")
}

fn bytes(f: &Fixture, key: &str) -> Vec<u8> {
    f.weights
        .read(key)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .into_vec::<u8>()
        .unwrap_or_else(|e| panic!("{key}: {e:?}"))
}

/// Bit-equality of two f32 slices, reporting the first difference and how many there are.
#[track_caller]
fn assert_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let diffs: Vec<usize> = (0..a.len())
        .filter(|&i| a[i].to_bits() != b[i].to_bits())
        .collect();
    if let Some(&i) = diffs.first() {
        panic!(
            "{what}: {} of {} values differ, first at {i}: {} vs {}",
            diffs.len(),
            a.len(),
            a[i],
            b[i]
        );
    }
}

/// `(input, cols)` of the two inputs: a 16 x 128 matrix (an all-zero block, exact zeros next to
/// tiny values) and a 3 x 40 one (120 values: a last block of 56).
const INPUTS: [(&str, usize); 2] = [("w", 128), ("odd", 40)];

#[test]
fn codes_equal_bitsandbytes() {
    let f = fixture();
    assert_bits(&NF4_CODE, &f.values("code.nf4"), "values");
    assert_bits(&FP4_CODE, &f.values("code.fp4"), "values");
    // The nested map saved with a double-quantized weight (first value -1, as the C quantizer
    // sets it).
    assert_bits(
        &dynamic_map(),
        &f.values("w.nf4_dq.nested_quant_map"),
        "values",
    );
}

#[test]
fn bnb_4bit_packed_bytes_and_dequantized_values_are_bit_equal() {
    let f = fixture();
    for (input, _) in INPUTS {
        let x = f.values(&format!("{input}.input"));
        for (t, name) in [(Bnb4bitType::Nf4, "nf4"), (Bnb4bitType::Fp4, "fp4")] {
            for dq in [false, true] {
                let c = format!("{input}.{name}{}", if dq { "_dq" } else { "" });
                let q = Bnb4bit::quantize(&x, 64, t, dq).expect("quantize");
                assert_eq!(q.data, bytes(&f, &format!("{c}.packed")), "{c}: packed");
                match &q.absmax {
                    Absmax::Plain(a) => assert_bits(a, &f.values(&format!("{c}.absmax")), &c),
                    Absmax::Nested {
                        q: qa,
                        nested_absmax,
                        offset,
                        ..
                    } => {
                        // bitsandbytes' offset is torch's f32 mean; ours is summed in f64 and
                        // rounded once: equal here (a last-bit difference would be possible).
                        let want = f.case(&c)["offset"].as_f64().expect("offset") as f32;
                        assert_eq!(offset.to_bits(), want.to_bits(), "{c}: offset");
                        assert_eq!(*qa, bytes(&f, &format!("{c}.absmax")), "{c}: absmax");
                        let na = f.values(&format!("{c}.nested_absmax"));
                        assert_bits(nested_absmax, &na, &format!("{c}: nested_absmax"));
                    }
                }
                let mut y = vec![0.0; x.len()];
                q.dequantize_range(0, &mut y);
                let want = f.values(&format!("{c}.dequantized"));
                assert_bits(&y, &want, &format!("{c}: dequantized"));
                // Any range (the matmul's tiles start anywhere) gives the same values.
                let mut part = vec![0.0; 37];
                q.dequantize_range(29, &mut part);
                assert_bits(&part, &want[29..66], &format!("{c}: a range"));
            }
        }
    }
}

#[test]
fn nested_quantization_of_bitsandbytes_absmax_is_bit_equal() {
    // The 8-bit blockwise quantizer alone, on bitsandbytes' own shifted absmax values.
    let f = fixture();
    let c = "w.fp4_dq";
    let plain = f.values("w.fp4.absmax");
    let offset = f.case(c)["offset"].as_f64().expect("offset") as f32;
    let shifted: Vec<f32> = plain.iter().map(|a| a - offset).collect();
    let (q, na) = quantize_blockwise(&shifted, &dynamic_map(), 256);
    assert_eq!(q, bytes(&f, &format!("{c}.absmax")));
    assert_bits(&na, &f.values(&format!("{c}.nested_absmax")), "values");
}

#[test]
fn int8_equals_the_documented_formula() {
    let f = fixture();
    for (input, cols) in INPUTS {
        let x = f.values(&format!("{input}.input"));
        let q = Int8Rowwise::quantize(&x, cols).expect("quantize");
        let want: Vec<i8> = f
            .weights
            .read(&format!("{input}.int8.q"))
            .expect("q")
            .into_vec::<i8>()
            .expect("i8");
        assert_eq!(q.data, want, "{input}");
        assert_bits(
            &q.scales,
            &f.values(&format!("{input}.int8.scale")),
            "values",
        );
        let mut y = vec![0.0; x.len()];
        q.dequantize_range(0, &mut y);
        assert_bits(
            &y,
            &f.values(&format!("{input}.int8.dequantized")),
            "values",
        );
    }
}

#[test]
fn fp8_equals_pytorch_float8_conversion() {
    let f = fixture();
    for (input, cols) in INPUTS {
        let x = f.values(&format!("{input}.input"));
        for (g, name) in [
            (Fp8Granularity::PerRow, "row"),
            (Fp8Granularity::PerTensor, "tensor"),
        ] {
            let c = format!("{input}.fp8_{name}");
            let q = Fp8E4m3::quantize(&x, cols, g).expect("quantize");
            assert_eq!(q.data, bytes(&f, &format!("{c}.q")), "{c}");
            assert_bits(&q.scales, &f.values(&format!("{c}.scale")), &c);
            let mut y = vec![0.0; x.len()];
            q.dequantize_range(0, &mut y);
            assert_bits(&y, &f.values(&format!("{c}.dequantized")), &c);
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    use diffusers_quantization::{QuantMethod, QuantizedTensor};
    let x = vec![1.0f32; 12];
    assert!(Int8Rowwise::quantize(&x, 5).is_err());
    assert!(Fp8E4m3::quantize(&x, 0, Fp8Granularity::PerRow).is_err());
    assert!(QuantizedTensor::quantize(&x, 5, 3, QuantMethod::Int8).is_err());
    let e = QuantMethod::parse("nf5", false).expect_err("unknown");
    assert!(e.to_string().contains("unknown quantization `nf5`"), "{e}");
}
