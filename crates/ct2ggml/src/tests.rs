//! End-to-end tests on a tiny synthetic CTranslate2 model built in memory (no network).

use super::*;
use std::collections::BTreeMap;

/// Small dims: state 4, 2 heads, 1 encoder + 2 decoder layers, 6 audio / 5 text positions,
/// 80 mels, vocabulary of 5 ordinary + 3 special tokens.
const S: usize = 4;
const HIDDEN: usize = 8;
const N_MELS: usize = 80;
const AUDIO_CTX: usize = 6;
const TEXT_CTX: usize = 5;
const ENC_LAYERS: usize = 1;
const DEC_LAYERS: usize = 2;
const VOCAB: [&str; 8] = [
    "a",
    "Ġb",
    "ĊĊ",
    "Ã©",
    "hello",
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
];

/// Element type of the synthetic float tensors.
#[derive(Clone, Copy)]
enum Src {
    F16,
    F32,
}

struct Synth {
    vars: BTreeMap<String, (Vec<usize>, u8, Vec<u8>)>,
    src: Src,
    /// Width (n_state) and MLP width.
    s: usize,
    hidden: usize,
}

impl Synth {
    /// Float tensor whose element i has value `i + offset` (exact in f16 for these sizes).
    fn float(&mut self, name: &str, dims: &[usize], offset: f32) {
        let n: usize = dims.iter().product();
        let (dt, data) = match self.src {
            Src::F16 => (
                4,
                (0..n)
                    .flat_map(|i| f16::f32_to_f16(i as f32 + offset).to_le_bytes())
                    .collect(),
            ),
            Src::F32 => (
                0,
                (0..n)
                    .flat_map(|i| (i as f32 + offset).to_le_bytes())
                    .collect(),
            ),
        };
        self.vars.insert(name.into(), (dims.to_vec(), dt, data));
    }

    fn fused_bias(&mut self, name: &str, parts: usize, key_part: usize) {
        self.float(name, &[parts * self.s], 0.5);
        let entry = self.vars.get_mut(name).unwrap();
        let es = entry.2.len() / (parts * self.s);
        for b in &mut entry.2[key_part * self.s * es..(key_part + 1) * self.s * es] {
            *b = 0;
        }
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) {
        self.float(&format!("{name}/weight"), &[out, inp], 0.0);
        self.float(&format!("{name}/bias"), &[out], 0.25);
    }

    fn ln(&mut self, name: &str) {
        self.float(&format!("{name}/gamma"), &[self.s], 1.0);
        self.float(&format!("{name}/beta"), &[self.s], -1.0);
    }

    fn layer(&mut self, p: &str, cross: bool) {
        self.float(
            &format!("{p}/self_attention/linear_0/weight"),
            &[3 * self.s, self.s],
            0.0,
        );
        self.fused_bias(&format!("{p}/self_attention/linear_0/bias"), 3, 1);
        self.linear(&format!("{p}/self_attention/linear_1"), self.s, self.s);
        self.ln(&format!("{p}/self_attention/layer_norm"));
        if cross {
            self.linear(&format!("{p}/attention/linear_0"), self.s, self.s);
            self.float(
                &format!("{p}/attention/linear_1/weight"),
                &[2 * self.s, self.s],
                100.0,
            );
            self.fused_bias(&format!("{p}/attention/linear_1/bias"), 2, 0);
            self.linear(&format!("{p}/attention/linear_2"), self.s, self.s);
            self.ln(&format!("{p}/attention/layer_norm"));
        }
        self.linear(&format!("{p}/ffn/linear_0"), self.hidden, self.s);
        self.linear(&format!("{p}/ffn/linear_1"), self.s, self.hidden);
        self.ln(&format!("{p}/ffn/layer_norm"));
    }

    fn new(src: Src) -> Synth {
        Synth::sized(src, S, HIDDEN)
    }

    /// The model with width `s` and MLP width `hidden`.
    fn sized(src: Src, w: usize, hidden: usize) -> Synth {
        let mut s = Synth {
            vars: BTreeMap::new(),
            src,
            s: w,
            hidden,
        };
        s.float("encoder/position_encodings/encodings", &[AUDIO_CTX, w], 0.0);
        s.float("encoder/conv1/weight", &[w, N_MELS, 3], 0.0);
        s.float("encoder/conv1/bias", &[w], 0.0);
        s.float("encoder/conv2/weight", &[w, w, 3], 0.0);
        s.float("encoder/conv2/bias", &[w], 0.0);
        for i in 0..ENC_LAYERS {
            s.layer(&format!("encoder/layer_{i}"), false);
        }
        s.ln("encoder/layer_norm");
        s.float("decoder/position_encodings/encodings", &[TEXT_CTX, w], 0.0);
        s.float("decoder/embeddings/weight", &[VOCAB.len(), w], 0.0);
        for i in 0..DEC_LAYERS {
            s.layer(&format!("decoder/layer_{i}"), true);
        }
        s.ln("decoder/layer_norm");
        // Scalars, as in the real files: heads are i16, flags i8.
        s.vars.insert(
            "encoder/num_heads".into(),
            (vec![], 2, 2i16.to_le_bytes().to_vec()),
        );
        s.vars.insert(
            "decoder/num_heads".into(),
            (vec![], 2, 2i16.to_le_bytes().to_vec()),
        );
        s.vars
            .insert("decoder/pre_norm".into(), (vec![], 1, vec![1]));
        s
    }

    /// Serialises in CTranslate2 binary v6 layout (variables sorted by name, one alias).
    fn bytes(&self, version: u32) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend(((s.len() + 1) as u16).to_le_bytes());
            out.extend(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend(version.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend(3u32.to_le_bytes());
        out.extend((self.vars.len() as u32).to_le_bytes());
        for (name, (dims, dt, data)) in &self.vars {
            string(&mut out, name);
            out.push(dims.len() as u8);
            for d in dims {
                out.extend((*d as u32).to_le_bytes());
            }
            out.push(*dt);
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(data);
        }
        out.extend(1u32.to_le_bytes());
        string(&mut out, "decoder/projection/weight");
        string(&mut out, "decoder/embeddings/weight");
        out
    }
}

fn tempdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("ct2ggml-test-{}-{tag}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn write_model_dir(dir: &Path, model: &[u8]) {
    fs::write(dir.join("model.bin"), model).unwrap();
    fs::write(dir.join("vocabulary.txt"), VOCAB.join("\n") + "\n").unwrap();
}

/// A parsed ggml tensor record.
#[derive(Debug)]
struct Tensor {
    name: String,
    /// ggml order: innermost first.
    ne: Vec<i32>,
    ftype: i32,
    data: Vec<u8>,
}

impl Tensor {
    fn values(&self) -> Vec<f32> {
        match self.ftype {
            1 => self
                .data
                .chunks_exact(2)
                .map(|c| f16::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            0 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            8 => q8_0::dequantize(&self.data),
            t => panic!("type {t}"),
        }
    }
}

struct Ggml {
    header: Vec<i32>,
    mel: (i32, i32, Vec<f32>),
    vocab: Vec<Vec<u8>>,
    tensors: Vec<Tensor>,
}

fn parse_ggml(b: &[u8]) -> Ggml {
    let mut p = 0;
    let rd = |p: &mut usize| {
        let v = i32::from_le_bytes(b[*p..*p + 4].try_into().unwrap());
        *p += 4;
        v
    };
    let header: Vec<i32> = (0..12).map(|_| rd(&mut p)).collect();
    let (rows, cols) = (rd(&mut p), rd(&mut p));
    let n = (rows * cols) as usize;
    let mel: Vec<f32> = b[p..p + 4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    p += 4 * n;
    let nv = rd(&mut p);
    let mut vocab = Vec::new();
    for _ in 0..nv {
        let l = rd(&mut p) as usize;
        vocab.push(b[p..p + l].to_vec());
        p += l;
    }
    let mut tensors = Vec::new();
    while p < b.len() {
        let n_dims = rd(&mut p);
        let name_len = rd(&mut p) as usize;
        let ftype = rd(&mut p);
        let ne: Vec<i32> = (0..n_dims).map(|_| rd(&mut p)).collect();
        let name = String::from_utf8(b[p..p + name_len].to_vec()).unwrap();
        p += name_len;
        let n = ne.iter().product::<i32>() as usize;
        let size = match ftype {
            0 => 4 * n,
            1 => 2 * n,
            8 => q8_0::bytes_for(n),
            t => panic!("tensor {name} of type {t}"),
        };
        tensors.push(Tensor {
            name,
            ne,
            ftype,
            data: b[p..p + size].to_vec(),
        });
        p += size;
    }
    Ggml {
        header,
        mel: (rows, cols, mel),
        vocab,
        tensors,
    }
}

fn expected_names() -> Vec<String> {
    let mut v: Vec<String> = [
        "encoder.positional_embedding",
        "encoder.conv1.weight",
        "encoder.conv1.bias",
        "encoder.conv2.weight",
        "encoder.conv2.bias",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let attn = |v: &mut Vec<String>, p: &str, a: &str| {
        for t in [
            "query.weight",
            "query.bias",
            "key.weight",
            "value.weight",
            "value.bias",
            "out.weight",
            "out.bias",
        ] {
            v.push(format!("{p}.{a}.{t}"));
        }
        v.push(format!("{p}.{a}_ln.weight"));
        v.push(format!("{p}.{a}_ln.bias"));
    };
    let mlp = |v: &mut Vec<String>, p: &str| {
        for t in [
            "mlp.0.weight",
            "mlp.0.bias",
            "mlp.2.weight",
            "mlp.2.bias",
            "mlp_ln.weight",
            "mlp_ln.bias",
        ] {
            v.push(format!("{p}.{t}"));
        }
    };
    for i in 0..ENC_LAYERS {
        let p = format!("encoder.blocks.{i}");
        attn(&mut v, &p, "attn");
        mlp(&mut v, &p);
    }
    v.push("encoder.ln_post.weight".into());
    v.push("encoder.ln_post.bias".into());
    v.push("decoder.positional_embedding".into());
    v.push("decoder.token_embedding.weight".into());
    for i in 0..DEC_LAYERS {
        let p = format!("decoder.blocks.{i}");
        attn(&mut v, &p, "attn");
        attn(&mut v, &p, "cross_attn");
        mlp(&mut v, &p);
    }
    v.push("decoder.ln.weight".into());
    v.push("decoder.ln.bias".into());
    v
}

fn check_synthetic_output(src: Src) {
    let dir = tempdir("ok");
    write_model_dir(&dir, &Synth::new(src).bytes(6));
    let out = dir.join("out.bin");
    let report = convert(&[&dir], &out).unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(report.bytes, bytes.len() as u64);
    {
        use sha2::Digest;
        assert_eq!(report.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    }
    let g = parse_ggml(&bytes);

    // Header: magic, n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
    // n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype.
    assert_eq!(
        g.header,
        vec![0x6767_6d6c, 8, 6, 4, 2, 1, 5, 4, 2, 2, 80, 1]
    );
    assert_eq!(
        report.hparams,
        HParams {
            n_vocab: 8,
            n_audio_ctx: 6,
            n_audio_state: 4,
            n_audio_head: 2,
            n_audio_layer: 1,
            n_text_ctx: 5,
            n_text_state: 4,
            n_text_head: 2,
            n_text_layer: 2,
            n_mels: 80,
            ftype: 1,
        }
    );
    assert!(!report.hparams.is_multilingual());
    assert_eq!((g.mel.0, g.mel.1), (80, 201));
    assert_eq!(g.mel.2, mel::mel_filters(80));

    // Vocabulary: tokens before <|endoftext|>, byte-decoded.
    let want: Vec<Vec<u8>> = vec![
        b"a".to_vec(),
        b" b".to_vec(),
        b"\n\n".to_vec(),
        "é".as_bytes().to_vec(),
        b"hello".to_vec(),
    ];
    assert_eq!(g.vocab, want);

    // Tensor order and names (OpenAI state_dict order).
    let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, expected_names());
    assert_eq!(report.tensors, names.len());
    assert_eq!(
        names.len(),
        5 + ENC_LAYERS * 15 + 2 + 2 + DEC_LAYERS * 24 + 2
    );

    let t = |name: &str| g.tensors.iter().find(|t| t.name == name).unwrap();
    // Types and reversed dims.
    assert_eq!(
        (
            t("encoder.positional_embedding").ftype,
            t("encoder.positional_embedding").ne.clone()
        ),
        (0, vec![4, 6])
    );
    assert_eq!(
        (
            t("encoder.conv1.weight").ftype,
            t("encoder.conv1.weight").ne.clone()
        ),
        (1, vec![3, 80, 4])
    );
    assert_eq!(
        (
            t("encoder.conv1.bias").ftype,
            t("encoder.conv1.bias").ne.clone()
        ),
        (0, vec![1, 4])
    );
    assert_eq!(
        (
            t("encoder.conv2.bias").ftype,
            t("encoder.conv2.bias").ne.clone()
        ),
        (0, vec![1, 4])
    );
    assert_eq!(
        (
            t("decoder.token_embedding.weight").ftype,
            t("decoder.token_embedding.weight").ne.clone()
        ),
        (1, vec![4, 8])
    );
    assert_eq!(t("decoder.positional_embedding").ftype, 0);
    assert_eq!(
        (
            t("encoder.blocks.0.mlp.0.weight").ftype,
            t("encoder.blocks.0.mlp.0.weight").ne.clone()
        ),
        (1, vec![4, 8])
    );
    assert_eq!(
        (
            t("encoder.blocks.0.mlp.2.weight").ne.clone(),
            t("encoder.blocks.0.mlp.0.bias").ftype
        ),
        (vec![8, 4], 0)
    );
    assert_eq!(t("decoder.blocks.1.mlp_ln.weight").ftype, 0);
    assert_eq!(
        t("decoder.blocks.1.mlp_ln.weight").values(),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(t("decoder.ln.bias").values(), vec![-1.0, 0.0, 1.0, 2.0]);

    // Fused q/k/v split: element i of the (12, 4) weight is i, so rows [0,4) are 0..16,
    // [4,8) 16..32, [8,12) 32..48. Bias element i is i + 0.5, key rows zeroed and dropped.
    let range = |a: usize, b: usize, off: f32| (a..b).map(|i| i as f32 + off).collect::<Vec<f32>>();
    for p in ["encoder.blocks.0.attn", "decoder.blocks.1.attn"] {
        assert_eq!(t(&format!("{p}.query.weight")).values(), range(0, 16, 0.0));
        assert_eq!(t(&format!("{p}.key.weight")).values(), range(16, 32, 0.0));
        assert_eq!(t(&format!("{p}.value.weight")).values(), range(32, 48, 0.0));
        assert_eq!(t(&format!("{p}.query.weight")).ne, vec![4, 4]);
        assert_eq!(t(&format!("{p}.query.bias")).values(), range(0, 4, 0.5));
        assert_eq!(t(&format!("{p}.value.bias")).values(), range(8, 12, 0.5));
        assert_eq!(t(&format!("{p}.value.bias")).ftype, 0);
    }
    // Cross-attention: fused (8, 4) k/v weight, element i = i + 100.
    let p = "decoder.blocks.0.cross_attn";
    assert_eq!(t(&format!("{p}.key.weight")).values(), range(0, 16, 100.0));
    assert_eq!(
        t(&format!("{p}.value.weight")).values(),
        range(16, 32, 100.0)
    );
    assert_eq!(t(&format!("{p}.value.bias")).values(), range(4, 8, 0.5));
    assert_eq!(t(&format!("{p}.query.bias")).values(), range(0, 4, 0.25));

    // No temporary file is left next to the output.
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn converts_synthetic_f16_model() {
    check_synthetic_output(Src::F16);
}

#[test]
fn converts_synthetic_f32_model_with_the_same_result() {
    check_synthetic_output(Src::F32);
    let (a, b) = (tempdir("f16"), tempdir("f32"));
    write_model_dir(&a, &Synth::new(Src::F16).bytes(6));
    write_model_dir(&b, &Synth::new(Src::F32).bytes(6));
    let ra = convert(&[&a], &a.join("o.bin")).unwrap();
    let rb = convert(&[&b], &b.join("o.bin")).unwrap();
    assert_eq!(ra.sha256, rb.sha256);
    fs::remove_dir_all(&a).unwrap();
    fs::remove_dir_all(&b).unwrap();
}

#[test]
fn split_parts_across_directories() {
    let model = Synth::new(Src::F16).bytes(6);
    let whole = tempdir("whole");
    write_model_dir(&whole, &model);
    let reference = convert(&[&whole], &whole.join("o.bin")).unwrap();

    // Three parts, given out of order over two directories; vocabulary in the second.
    let (d1, d2) = (tempdir("p1"), tempdir("p2"));
    let cut = [0, 1000, 5000, model.len()];
    fs::write(d2.join("model.bin.part1"), &model[cut[0]..cut[1]]).unwrap();
    fs::write(d1.join("model.bin.part2"), &model[cut[1]..cut[2]]).unwrap();
    fs::write(d2.join("model.bin.part3"), &model[cut[2]..cut[3]]).unwrap();
    fs::write(d2.join("vocabulary.txt"), VOCAB.join("\n")).unwrap();
    let out = d1.join("o.bin");
    let r = convert(&[&d1, &d2], &out).unwrap();
    assert_eq!(r.sha256, reference.sha256);

    // A missing part is an error, and no output appears.
    fs::remove_file(&out).unwrap();
    fs::remove_file(d1.join("model.bin.part2")).unwrap();
    let err = convert(&[&d1, &d2], &out).unwrap_err();
    assert!(matches!(err, ConvertError::ModelNotFound(_)), "{err}");
    assert!(!out.exists());
    for d in [whole, d1, d2] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn legacy_eot_adds_the_token() {
    let dir = tempdir("eot");
    write_model_dir(&dir, &Synth::new(Src::F16).bytes(6));
    let plain = convert(&[&dir], &dir.join("a.bin")).unwrap();
    let legacy = convert_with(
        &[&dir],
        &dir.join("b.bin"),
        &ConvertOptions {
            legacy_eot: true,
            ..ConvertOptions::default()
        },
    )
    .unwrap();
    assert_eq!(legacy.bytes, plain.bytes + 4 + 13);
    let g = parse_ggml(&fs::read(dir.join("b.bin")).unwrap());
    assert_eq!(g.vocab.len(), 6);
    assert_eq!(g.vocab[5], b"<|endoftext|>");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vocabulary_json_is_accepted() {
    let dir = tempdir("json");
    fs::write(dir.join("model.bin"), Synth::new(Src::F16).bytes(6)).unwrap();
    let json = format!(
        "[{}]",
        VOCAB
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    fs::write(dir.join("vocabulary.json"), json).unwrap();
    let g = {
        convert(&[&dir], &dir.join("o.bin")).unwrap();
        parse_ggml(&fs::read(dir.join("o.bin")).unwrap())
    };
    assert_eq!(g.vocab.len(), 5);
    assert_eq!(g.vocab[1], b" b");
    fs::remove_dir_all(&dir).unwrap();
}

/// Runs `convert` on a broken model and checks the error and that nothing was written.
fn expect_failure(model: &[u8], vocab: bool) -> ConvertError {
    let dir = tempdir("bad");
    fs::write(dir.join("model.bin"), model).unwrap();
    if vocab {
        fs::write(dir.join("vocabulary.txt"), VOCAB.join("\n")).unwrap();
    }
    let out = dir.join("o.bin");
    let err = convert(&[&dir], &out).unwrap_err();
    let left = fs::read_dir(&dir).unwrap().count();
    assert_eq!(left, 1 + vocab as usize, "leftover files after {err}");
    fs::remove_dir_all(&dir).unwrap();
    err
}

#[test]
fn errors_leave_no_output() {
    let err = expect_failure(&Synth::new(Src::F16).bytes(5), true);
    assert!(matches!(err, ConvertError::BadVersion(5)), "{err}");

    let good = Synth::new(Src::F16).bytes(6);
    let err = expect_failure(&good[..good.len() / 2], true);
    assert!(matches!(err, ConvertError::Malformed(_)), "{err}");

    let err = expect_failure(&good, false);
    assert!(matches!(err, ConvertError::Vocabulary(_)), "{err}");

    let mut s = Synth::new(Src::F16);
    s.vars.remove("decoder/layer_1/attention/linear_2/weight");
    let err = expect_failure(&s.bytes(6), true);
    assert!(
        matches!(&err, ConvertError::MissingTensor(n) if n == "decoder/layer_1/attention/linear_2/weight"),
        "{err}"
    );

    // Key bias rows that are not zero must not be silently dropped.
    let mut s = Synth::new(Src::F16);
    s.float(
        "encoder/layer_0/self_attention/linear_0/bias",
        &[3 * S],
        1.0,
    );
    let err = expect_failure(&s.bytes(6), true);
    assert!(matches!(err, ConvertError::NonZeroKeyBias(_)), "{err}");

    // int8 weights (a quantized CT2 model) are refused.
    let mut s = Synth::new(Src::F16);
    s.vars.insert(
        "encoder/conv1/weight".into(),
        (vec![S, N_MELS, 3], 1, vec![0; S * N_MELS * 3]),
    );
    let err = expect_failure(&s.bytes(6), true);
    assert!(matches!(err, ConvertError::UnexpectedDtype { .. }), "{err}");

    // Wrong fused shape.
    let mut s = Synth::new(Src::F16);
    s.float(
        "decoder/layer_0/self_attention/linear_0/weight",
        &[2 * S, S],
        0.0,
    );
    let err = expect_failure(&s.bytes(6), true);
    assert!(matches!(err, ConvertError::BadShape { .. }), "{err}");
}

#[test]
fn existing_output_is_untouched_on_failure() {
    let dir = tempdir("keep");
    fs::write(dir.join("model.bin"), Synth::new(Src::F16).bytes(9)).unwrap();
    fs::write(dir.join("vocabulary.txt"), VOCAB.join("\n")).unwrap();
    let out = dir.join("o.bin");
    fs::write(&out, b"previous").unwrap();
    assert!(convert(&[&dir], &out).is_err());
    assert_eq!(fs::read(&out).unwrap(), b"previous");
    fs::remove_dir_all(&dir).unwrap();
}

/// Converts `synth` in a fresh directory with `quant`; returns the report and the file's bytes.
fn convert_synth(synth: &Synth, quant: Quant) -> (ConvertReport, Vec<u8>) {
    let dir = tempdir("q");
    write_model_dir(&dir, &synth.bytes(6));
    let out = dir.join("o.bin");
    let opts = ConvertOptions {
        quant,
        ..ConvertOptions::default()
    };
    let report = convert_with(&[&dir], &out, &opts).unwrap();
    let bytes = fs::read(&out).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    (report, bytes)
}

#[test]
fn q8_0_file_is_the_f16_file_quantized_as_whisper_cpp_does() {
    // Width 32, MLP 64: every matrix row is one or two q8_0 blocks.
    let synth = Synth::sized(Src::F32, 32, 64);
    let (r16, b16) = convert_synth(&synth, Quant::F16);
    let (r8, b8) = convert_synth(&synth, Quant::Q8_0);
    assert_eq!(r8.bytes, b8.len() as u64);
    assert_eq!(r8.tensors, r16.tensors);
    assert_eq!(r8.hparams.ftype, 2007);
    assert_eq!(
        HParams {
            ftype: 1,
            ..r8.hparams
        },
        r16.hparams
    );
    let (g16, g8) = (parse_ggml(&b16), parse_ggml(&b8));
    // Header: the same but ftype = 7 (GGML_FTYPE_MOSTLY_Q8_0) + 2 · 1000 (qntvr 2).
    assert_eq!(g16.header[11], 1);
    assert_eq!(g8.header[11], 2007);
    assert_eq!(g8.header[..11], g16.header[..11]);
    assert_eq!(g8.mel.2, g16.mel.2);
    assert_eq!(g8.vocab, g16.vocab);

    let mut quantized = Vec::new();
    let mut saved = 0usize;
    for (t8, t16) in g8.tensors.iter().zip(&g16.tensors) {
        assert_eq!((&t8.name, &t8.ne), (&t16.name, &t16.ne));
        if is_quantized(&t8.name, t8.ne.len()) {
            // Type 8, and exactly ggml's blocks of the f16 file's values.
            assert_eq!(t8.ftype, 8, "{}", t8.name);
            assert_eq!(t16.ftype, 1, "{}", t16.name);
            assert_eq!(
                t8.data,
                q8_0::quantize(&t16.values()).unwrap(),
                "{}",
                t8.name
            );
            let n = t16.values().len();
            saved += 2 * n - n / 32 * 34;
            quantized.push(t8.name.clone());
        } else {
            assert_eq!((t8.ftype, &t8.data), (t16.ftype, &t16.data), "{}", t8.name);
        }
    }
    assert_eq!(r8.bytes, r16.bytes - saved as u64);
    // What is quantized: the linear weights (6 per encoder layer, 10 per decoder layer) and
    // the token embedding; never the 3-D conv weights, the positional embeddings, the
    // (n_state, 1) conv biases or anything 1-D.
    assert_eq!(quantized.len(), ENC_LAYERS * 6 + 1 + DEC_LAYERS * 10);
    assert!(quantized.iter().all(|n| n.ends_with(".weight")));
    assert!(quantized.contains(&"decoder.token_embedding.weight".to_string()));
    assert!(quantized.contains(&"decoder.blocks.1.cross_attn.key.weight".to_string()));
    let t = |name: &str| g8.tensors.iter().find(|t| t.name == name).unwrap();
    assert_eq!(
        (
            t("encoder.conv2.weight").ftype,
            t("encoder.conv2.weight").ne.clone()
        ),
        (1, vec![3, 32, 32])
    );
    assert_eq!(
        (
            t("encoder.conv1.bias").ftype,
            t("encoder.conv1.bias").ne.clone()
        ),
        (0, vec![1, 32])
    );
    assert_eq!(t("decoder.positional_embedding").ftype, 0);
    assert_eq!(t("encoder.blocks.0.mlp.0.bias").ftype, 0);
    assert_eq!(
        (
            t("encoder.blocks.0.mlp.2.weight").ftype,
            t("encoder.blocks.0.mlp.2.weight").ne.clone()
        ),
        (8, vec![64, 32])
    );
    // Quantized from the f16 values: an f16 source gives the same file.
    let (r8h, _) = convert_synth(&Synth::sized(Src::F16, 32, 64), Quant::Q8_0);
    assert_eq!(r8h.sha256, r8.sha256);
    // Deterministic.
    assert_eq!(convert_synth(&synth, Quant::Q8_0).0.sha256, r8.sha256);
}

#[test]
fn q8_0_refuses_rows_that_are_not_whole_blocks() {
    // Width 4: the first tensor to quantize has rows of 4 values. ggml would assert; no file.
    let dir = tempdir("q8bad");
    write_model_dir(&dir, &Synth::new(Src::F16).bytes(6));
    let out = dir.join("o.bin");
    let opts = ConvertOptions {
        quant: Quant::Q8_0,
        ..ConvertOptions::default()
    };
    let err = convert_with(&[&dir], &out, &opts).unwrap_err();
    assert!(
        matches!(&err, ConvertError::NotBlockAligned { name, source: q8_0::NotBlockAligned(4) }
            if name == "encoder.blocks.0.attn.query.weight"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "tensor encoder.blocks.0.attn.query.weight cannot be quantized: 4 values do not split \
         into q8_0 blocks of 32"
    );
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "output left behind");
    fs::remove_dir_all(&dir).unwrap();

    // A row of 48 (a multiple of 16, not of 32) is refused too, even though the tensor as a
    // whole (48 × 32 × 3 values) would fill whole blocks.
    let (_, ok) = convert_synth(&Synth::sized(Src::F16, 64, 128), Quant::Q8_0);
    assert_eq!(parse_ggml(&ok).header[11], 2007);
    let dir = tempdir("q8bad48");
    write_model_dir(&dir, &Synth::sized(Src::F16, 48, 96).bytes(6));
    let err = convert_with(&[&dir], &dir.join("o.bin"), &opts).unwrap_err();
    assert!(
        matches!(
            &err,
            ConvertError::NotBlockAligned {
                source: q8_0::NotBlockAligned(48),
                ..
            }
        ),
        "{err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantized_tensors_follow_whisper_cpp_rules() {
    assert!(is_quantized("encoder.blocks.0.attn.query.weight", 2));
    assert!(is_quantized("decoder.token_embedding.weight", 2));
    for skipped in QUANT_SKIP {
        assert!(!is_quantized(skipped, 2), "{skipped}");
    }
    assert!(!is_quantized("encoder.conv1.weight", 3));
    assert!(!is_quantized("encoder.blocks.0.attn.query.bias", 1));
    assert_eq!(Quant::default(), Quant::F16);
    assert_eq!(Quant::F16.header_ftype(), 1);
    assert_eq!(Quant::Q8_0.header_ftype(), 2007);
}

#[test]
fn quantizing_the_f16_file_gives_the_q8_0_conversion() {
    let dir = tempdir("qfile");
    write_model_dir(&dir, &Synth::sized(Src::F32, 32, 64).bytes(6));
    let f16 = dir.join("f16.bin");
    convert(&[&dir], &f16).unwrap();
    let direct = convert_with(
        &[&dir],
        &dir.join("direct.bin"),
        &ConvertOptions {
            quant: Quant::Q8_0,
            ..ConvertOptions::default()
        },
    )
    .unwrap();
    let out = dir.join("q.bin");
    let r = quantize_file(&f16, &out).unwrap();
    assert_eq!(r.sha256, direct.sha256);
    assert_eq!(r.bytes, direct.bytes);
    assert_eq!(r.tensors, direct.tensors);
    assert_eq!(r.hparams, direct.hparams);
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(dir.join("direct.bin")).unwrap()
    );

    // A q8_0 file is not quantized again; a truncated file is malformed; no output is left.
    let again = dir.join("again.bin");
    let err = quantize_file(&out, &again).unwrap_err();
    assert!(
        matches!(&err, ConvertError::Malformed(m) if m.ends_with("ftype 2007 (only f16 files, ftype 1, are quantized)")),
        "{err}"
    );
    let bytes = fs::read(&f16).unwrap();
    let cut = dir.join("cut.bin");
    fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let err = quantize_file(&cut, &again).unwrap_err();
    assert!(
        matches!(&err, ConvertError::Malformed(m) if m.ends_with("truncated")),
        "{err}"
    );
    fs::write(
        &cut,
        b"GGUF and more bytes than a header needs, surely enough now",
    )
    .unwrap();
    let err = quantize_file(&cut, &again).unwrap_err();
    assert!(
        matches!(&err, ConvertError::Malformed(m) if m.ends_with("bad magic)")),
        "{err}"
    );
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cut.bin",
            "direct.bin",
            "f16.bin",
            "model.bin",
            "q.bin",
            "vocabulary.txt"
        ]
    );
    fs::remove_dir_all(&dir).unwrap();
}
