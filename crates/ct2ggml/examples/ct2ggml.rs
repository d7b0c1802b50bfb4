//! Command-line front end: `ct2ggml INPUT_DIR... OUTPUT.bin` converts a CTranslate2 Whisper
//! model (one or more directories) into a whisper.cpp ggml f16 file and prints the report.

use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: ct2ggml INPUT_DIR... OUTPUT.bin");
        std::process::exit(2);
    }
    let (inputs, out) = args.split_at(args.len() - 1);
    let inputs: Vec<&Path> = inputs.iter().map(Path::new).collect();
    let t = Instant::now();
    match ct2ggml::convert(&inputs, Path::new(&out[0])) {
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
