//! Command-line front end: `ct2ggml [--q8_0] INPUT_DIR... OUTPUT.bin` converts a CTranslate2
//! Whisper model (one or more directories) into a whisper.cpp ggml file (f16, or q8_0 with
//! `--q8_0`); `ct2ggml --quantize F16.bin OUTPUT.bin` quantizes an f16 ggml file to q8_0.
//! Prints the report.

use std::path::Path;
use std::time::Instant;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let q8 = args.first().is_some_and(|a| a == "--q8_0");
    if q8 {
        args.remove(0);
    }
    if args.len() < 2 {
        eprintln!("usage: ct2ggml [--q8_0] INPUT_DIR... OUTPUT.bin | ct2ggml --quantize F16.bin OUTPUT.bin");
        std::process::exit(2);
    }
    let (inputs, out) = args.split_at(args.len() - 1);
    let inputs: Vec<&Path> = inputs.iter().map(Path::new).collect();
    let t = Instant::now();
    let opts = ct2ggml::ConvertOptions {
        quant: if q8 {
            ct2ggml::Quant::Q8_0
        } else {
            ct2ggml::Quant::F16
        },
        ..Default::default()
    };
    let quantize = inputs
        .first()
        .is_some_and(|a| a.as_os_str() == "--quantize");
    let result = if quantize && inputs.len() == 2 {
        ct2ggml::quantize_file(inputs[1], Path::new(&out[0]))
    } else {
        ct2ggml::convert_with(&inputs, Path::new(&out[0]), &opts)
    };
    match result {
        Ok(r) => println!(
            "{} tensors, {} bytes, sha256 {}, {:?}, {:.2} s",
            r.tensors,
            r.bytes,
            r.sha256,
            r.hparams,
            t.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
