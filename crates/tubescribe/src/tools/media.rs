//! Pure ffprobe/ffmpeg plumbing: argument vectors for `ffprobe` and `ffmpeg`, parsers for
//! ffprobe's JSON and ffmpeg's `-progress pipe:1` lines, and the checks that catch media that
//! is not whole ([`MediaError::is_broken`]).
//!
//! Nothing here spawns a process; `crate::tools::process` runs the vectors and
//! feeds the output back in. Facts come from `/work/shared/design/download.md`
//! §5 and were re-checked with Debian's ffmpeg/ffprobe 5.1.9 (the captured
//! outputs are the test fixtures below).
//!
//! Download stage: [`ffprobe_args`] → [`parse_ffprobe`] (a failure naming a missing
//! `moov` atom is [`MediaError::MissingIndex`], [`missing_index`]) → [`MediaInfo::require_audio`]
//! (no audio ⇒ permanent) → [`wav_data_sizes`] (a WAV cut short) → [`audio_packets_args`], a
//! stream copy of the audio packets whose end is compared with the declared duration by
//! [`check_length`] — a faststart MP4 cut at 60 % still probes with its full duration, and
//! this read (≈ 0.09 s for 10 min of AAC, against 0.37 s for the decode) is what finds it.
//!
//! Transcribe stage: [`ffmpeg_to_wav_args`] (exit ≠ 0 ⇒ failure, keep the stderr tail; log
//! non-empty stderr even on exit 0) → probe the WAV → [`check_length`] again, on the decoded
//! audio.

use std::ffi::OsString;
use std::path::Path;

use serde::Deserialize;

/// Sample rate of the WAV handed to whisper, in Hz.
pub const WAV_SAMPLE_RATE_HZ: u32 = 16_000;
/// Channels of the WAV handed to whisper (mono).
pub const WAV_CHANNELS: u16 = 1;
/// Bytes per second of 16 kHz mono `pcm_s16le` audio (16000 × 2).
pub const WAV_BYTES_PER_SECOND: u64 = 32_000;

/// Minimum absolute shortfall, in seconds, tolerated by [`check_length`].
pub const TRUNCATION_TOLERANCE_MIN_S: f64 = 2.0;
/// Relative shortfall (fraction of the expected duration) tolerated by [`check_length`].
pub const TRUNCATION_TOLERANCE_FRACTION: f64 = 0.02;

/// Media errors. None of them is fixed by re-running ffprobe/ffmpeg on the same file, so
/// [`MediaError::is_retryable`] is always `false`; [`MediaError::is_broken`] says when the
/// file is not whole, so that fetching it again may help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MediaError {
    /// ffprobe found no audio stream (video-only file, or not media at all:
    /// ffprobe "recognised" random bytes as LRC lyrics with a subtitle
    /// stream, download.md §5.2). Permanent.
    #[error("the media has no audio stream")]
    NoAudioStream,
    /// The audio (its packets, or the decoded WAV) ends well before the duration the file
    /// declares: the file was cut short, yet ffmpeg exited 0 (download.md §5.2).
    #[error("{}", self.describe("the media"))]
    Truncated {
        /// Declared duration in seconds (ffprobe `format.duration` of the
        /// input, else yt-dlp's `duration`).
        expected_s: f64,
        /// Where the audio ends, in seconds (last packet, or decoded length).
        decoded_s: f64,
    },
    /// A WAV file whose header declares more audio bytes than the file holds.
    #[error("{}", self.describe("the media"))]
    TruncatedWav {
        /// Audio bytes the `data` chunk header declares.
        declared_bytes: u64,
        /// Audio bytes the file holds.
        present_bytes: u64,
    },
    /// An MP4/M4A without its index (`moov atom not found`): a file whose index comes last
    /// (no `faststart`) and that was cut before it.
    #[error("{}", self.describe("the media"))]
    MissingIndex,
    /// ffmpeg could not read the audio packets to the end (its last error line).
    #[error("{}", self.describe("the media"))]
    Corrupt(String),
    /// ffprobe output could not be used (not JSON, no streams, …). Holds a
    /// human description.
    #[error("could not probe the media: {0}")]
    Probe(String),
}

impl MediaError {
    /// Whether retrying the same ffprobe/ffmpeg step on the same file can succeed.
    /// Always `false`: ffmpeg/ffprobe are deterministic on a given file.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// Whether the file is not whole (truncated or corrupt), so that fetching it again may
    /// fix it (download.md §5.2 (c): "retry stage 1").
    pub fn is_broken(&self) -> bool {
        matches!(
            self,
            MediaError::Truncated { .. }
                | MediaError::TruncatedWav { .. }
                | MediaError::MissingIndex
                | MediaError::Corrupt(_)
        )
    }

    /// The error as one sentence about `subject` ("the downloaded media", "the media file"):
    /// `<subject> is truncated: its audio ends at 21.4 s but the file declares 35.6 s`. For
    /// the errors that are not about a broken file, the usual message.
    pub fn describe(&self, subject: &str) -> String {
        match self {
            MediaError::Truncated {
                expected_s,
                decoded_s,
            } => format!(
                "{subject} is truncated: its audio ends at {decoded_s:.1} s but the file declares {expected_s:.1} s"
            ),
            MediaError::TruncatedWav {
                declared_bytes,
                present_bytes,
            } => format!(
                "{subject} is truncated: its WAV header declares {declared_bytes} bytes of audio but it holds {present_bytes}"
            ),
            MediaError::MissingIndex => format!(
                "{subject} is truncated: its MP4 index (moov atom) is missing, as in a file cut short"
            ),
            MediaError::Corrupt(line) => {
                format!("{subject} is corrupt: ffmpeg could not read its audio to the end ({line})")
            }
            e => e.to_string(),
        }
    }
}

/// Whether ffprobe's or ffmpeg's standard error says the MP4 index is missing
/// (`[mov,mp4,m4a,3gp,3g2,mj2 @ 0x…] moov atom not found`, ffmpeg 5.1.9).
pub fn missing_index(stderr: &str) -> bool {
    stderr.contains("moov atom not found")
}

/// Argument vector (without the program name) for
/// `ffprobe -v error -show_entries format=duration:stream=index,codec_type,codec_name,sample_rate,channels -of json INPUT`.
///
/// On success ffprobe exits 0 and prints the JSON parsed by
/// [`parse_ffprobe`]. On unreadable input (empty file, random bytes, missing
/// file) it exits 1, prints `{ }` on stdout and e.g.
/// `empty.mp4: Invalid data found when processing input` on stderr
/// (verified, ffprobe 5.1.9).
pub fn ffprobe_args(input: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = [
        "-v",
        "error",
        "-show_entries",
        "format=duration:stream=index,codec_type,codec_name,sample_rate,channels",
        "-of",
        "json",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    v.push(input_arg(input));
    v
}

/// What stage 2 needs to know about a media file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaInfo {
    /// Container duration in seconds (ffprobe `format.duration`, a string in
    /// the JSON); `None` when ffprobe does not report one.
    pub duration_s: Option<f64>,
    /// Audio streams, in file order.
    pub audio_streams: Vec<AudioStream>,
    /// Whether any video stream exists (cover art counts too).
    pub has_video: bool,
}

/// One audio stream reported by ffprobe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AudioStream {
    /// Stream index in the container.
    pub index: Option<u32>,
    /// Codec name, e.g. `aac`, `opus`, `pcm_s16le`.
    pub codec: Option<String>,
    /// Sample rate in Hz.
    pub sample_rate_hz: Option<u32>,
    /// Channel count.
    pub channels: Option<u32>,
}

impl MediaInfo {
    /// The first audio stream (the one `-map 0:a:0` picks), or
    /// [`MediaError::NoAudioStream`].
    pub fn require_audio(&self) -> Result<&AudioStream, MediaError> {
        self.audio_streams.first().ok_or(MediaError::NoAudioStream)
    }
}

#[derive(Deserialize)]
struct RawProbe {
    streams: Option<Vec<RawStream>>,
    format: Option<RawFormat>,
}

#[derive(Deserialize)]
struct RawStream {
    index: Option<u32>,
    codec_type: Option<String>,
    codec_name: Option<String>,
    sample_rate: Option<serde_json::Value>,
    channels: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawFormat {
    duration: Option<serde_json::Value>,
}

/// Parses the stdout of [`ffprobe_args`].
///
/// Shape (ffprobe 5.1.9): `{"programs": [], "streams": [{"index": 1,
/// "codec_name": "aac", "codec_type": "audio", "sample_rate": "44100",
/// "channels": 2}, …], "format": {"duration": "600.000000"}}`. Numbers that
/// ffprobe prints as strings (`sample_rate`, `duration`) and `"N/A"` are
/// handled.
///
/// # Errors
/// [`MediaError::Probe`] when the text is not JSON or has neither `streams`
/// nor `format` (ffprobe's `{ }` on unreadable input). A file that parses
/// but has no audio stream is **not** an error here; use
/// [`MediaInfo::require_audio`].
pub fn parse_ffprobe(json: &str) -> Result<MediaInfo, MediaError> {
    let raw: RawProbe = serde_json::from_str(json)
        .map_err(|e| MediaError::Probe(format!("ffprobe output is not valid JSON: {e}")))?;
    if raw.streams.is_none() && raw.format.is_none() {
        return Err(MediaError::Probe(
            "ffprobe reported no streams (not a media file?)".to_owned(),
        ));
    }
    let duration_s = raw
        .format
        .and_then(|f| f.duration)
        .as_ref()
        .and_then(value_f64)
        .filter(|d| *d >= 0.0);
    let mut info = MediaInfo {
        duration_s,
        ..MediaInfo::default()
    };
    for s in raw.streams.unwrap_or_default() {
        match s.codec_type.as_deref() {
            Some("audio") => info.audio_streams.push(AudioStream {
                index: s.index,
                codec: s.codec_name,
                sample_rate_hz: s.sample_rate.as_ref().and_then(value_u32),
                channels: s.channels.as_ref().and_then(value_u32),
            }),
            Some("video") => info.has_video = true,
            _ => {}
        }
    }
    Ok(info)
}

/// Argument vector (without the program name) converting the first audio
/// stream of `input` to 16 kHz mono `pcm_s16le` WAV at `output`:
/// `-nostdin -hide_banner -loglevel error -nostats -progress pipe:1 -y -i IN
/// -map 0:a:0 -vn -sn -dn -ac 1 -ar 16000 -c:a pcm_s16le -f wav OUT`
/// (download.md §5.1).
///
/// `-f wav` forces the muxer, so `output` may be a temporary name with any
/// extension (e.g. `audio.wav.tmp`, then rename). Progress blocks go to
/// stdout ([`parse_ffmpeg_progress_line`]); errors to stderr. A missing
/// audio stream gives exit 1 and `Stream map '0:a:0' matches no streams.`.
/// Paths starting with `-` are passed as `./-…` so ffmpeg cannot read them
/// as options.
pub fn ffmpeg_to_wav_args(input: &Path, output: &Path) -> Vec<OsString> {
    let mut v = ffmpeg_reading(&["-y"], input);
    for a in [
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-ac",
        "1",
        "-ar",
        "16000",
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
    ] {
        v.push(OsString::from(a));
    }
    v.push(input_arg(output));
    v
}

/// The start of an ffmpeg argument vector reading `input`: no stdin, errors only, progress
/// blocks on stdout (`-nostdin -hide_banner -loglevel error -nostats -progress pipe:1`), then
/// `options` and `-i INPUT`.
fn ffmpeg_reading(options: &[&str], input: &Path) -> Vec<OsString> {
    let quiet = [
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostats",
        "-progress",
        "pipe:1",
    ];
    let mut v: Vec<OsString> = quiet.iter().chain(options).map(OsString::from).collect();
    v.push(OsString::from("-i"));
    v.push(input_arg(input));
    v
}

/// Guards a path argument: a relative path starting with `-` becomes
/// `./-…`. (ffmpeg also treats `proto:` prefixes as protocols; callers pass
/// paths inside the job directory, which are absolute.)
fn input_arg(p: &Path) -> OsString {
    if p.as_os_str().as_encoded_bytes().first() == Some(&b'-') {
        Path::new(".").join(p).into_os_string()
    } else {
        p.as_os_str().to_owned()
    }
}

/// Block state from a `progress=` line of `-progress pipe:1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// `progress=continue`: a block ended, more will follow.
    Continue,
    /// `progress=end`: the last block; ffmpeg is finishing.
    End,
}

/// What one meaningful line of ffmpeg's `-progress pipe:1` output says.
/// Each line sets exactly one of the two fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FfmpegProgress {
    /// Output position in seconds, from `out_time_us=`, `out_time_ms=` (also
    /// microseconds — an ffmpeg quirk, verified on 5.1.9:
    /// `out_time_us=10432000` / `out_time_ms=10432000` /
    /// `out_time=00:00:10.432000`) or `out_time=HH:MM:SS.micro`.
    pub out_time_s: Option<f64>,
    /// Set by `progress=continue|end`, which closes a block.
    pub state: Option<ProgressState>,
}

/// Parses one `key=value` line of `-progress pipe:1`. Returns `None` for
/// other keys (`bitrate`, `total_size`, `speed`, …), `N/A` or negative
/// times, and malformed lines. Percent = `out_time_s / input duration`
/// ([`progress_percent`]).
pub fn parse_ffmpeg_progress_line(line: &str) -> Option<FfmpegProgress> {
    let (key, value) = line.trim().split_once('=')?;
    let value = value.trim();
    let time = |seconds: f64| FfmpegProgress {
        out_time_s: Some(seconds),
        state: None,
    };
    let state = |st: ProgressState| FfmpegProgress {
        out_time_s: None,
        state: Some(st),
    };
    match key.trim() {
        "out_time_us" | "out_time_ms" => value
            .parse::<i64>()
            .ok()
            .filter(|us| *us >= 0)
            .map(|us| time(us as f64 / 1_000_000.0)),
        "out_time" => parse_hms(value).map(time),
        "progress" => match value {
            "continue" => Some(state(ProgressState::Continue)),
            "end" => Some(state(ProgressState::End)),
            _ => None,
        },
        _ => None,
    }
}

/// Percent (0–100) of `out_time_s` over `input_duration_s`; `None` when the
/// duration is unknown or not positive.
pub fn progress_percent(out_time_s: f64, input_duration_s: Option<f64>) -> Option<f64> {
    let d = input_duration_s.filter(|d| d.is_finite() && *d > 0.0)?;
    Some((out_time_s / d * 100.0).clamp(0.0, 100.0))
}

/// Parses `HH:MM:SS(.frac)` into seconds (ffmpeg's `out_time`).
fn parse_hms(s: &str) -> Option<f64> {
    let mut parts = s.splitn(3, ':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    let t = h * 3600.0 + m * 60.0 + sec;
    (t.is_finite() && t >= 0.0 && h >= 0.0).then_some(t)
}

/// Checks that the audio — its last packet ([`audio_packets_args`]) or the decoded WAV — does
/// not end much before the duration the file declares.
///
/// Tolerance: a shortfall of up to `max(2 s, 2 % of expected_s)` is
/// accepted. Container durations and decoded lengths legitimately differ a
/// little (AAC priming/padding ≈ 23 ms, Opus pre-skip, bitrate-based
/// duration estimates for VBR streams), and the 2 s floor keeps short clips
/// from failing on that. A truncated download is far outside it: ffmpeg
/// 5.1.9 exited **0** while producing 3.78 s of a 21.8 s MP4 and 7.95 s of
/// a 21.85 s WebM (download.md §5.2), and 1.86 s of a 10.6 s MP4 here; its
/// stream copy of a 600 s faststart M4A cut at 60 % ended at 357.4 s.
/// Longer-than-expected output is fine. A non-finite or non-positive
/// `expected_s` means "unknown" and passes.
///
/// # Errors
/// [`MediaError::Truncated`] when `expected_s - decoded_s` exceeds the
/// tolerance.
pub fn check_length(expected_s: f64, decoded_s: f64) -> Result<(), MediaError> {
    if !expected_s.is_finite() || expected_s <= 0.0 {
        return Ok(());
    }
    let decoded = if decoded_s.is_finite() {
        decoded_s.max(0.0)
    } else {
        0.0
    };
    let tolerance = TRUNCATION_TOLERANCE_MIN_S.max(expected_s * TRUNCATION_TOLERANCE_FRACTION);
    if expected_s - decoded > tolerance {
        Err(MediaError::Truncated {
            expected_s,
            decoded_s: decoded,
        })
    } else {
        Ok(())
    }
}

/// Argument vector (without the program name) reading every packet of the first audio
/// stream without decoding it: `-nostdin -hide_banner -loglevel error -nostats -progress
/// pipe:1 -i IN -map 0:a:0 -c copy -f null -`.
///
/// The last `out_time_us=` of its progress output ([`parse_ffmpeg_progress_line`]) is where
/// the audio ends, to compare with the declared duration ([`check_length`]). On a file cut
/// short ffmpeg 5.1.9 still exits 0, after `stream 0, offset 0x…: partial file` (MP4) or
/// `File ended prematurely` (WebM) on stderr. Measured on 10 min of audio (page cache, 2
/// cores): 92 ms for AAC in M4A (9.7 MB), 102 ms for Opus in WebM; ffprobe alone takes 65 ms,
/// the decode to WAV 370–730 ms.
pub fn audio_packets_args(input: &Path) -> Vec<OsString> {
    let mut v = ffmpeg_reading(&[], input);
    for a in ["-map", "0:a:0", "-c", "copy", "-f", "null", "-"] {
        v.push(OsString::from(a));
    }
    v
}

/// Checks a WAV file's first bytes `head` (e.g. 64 KiB) and length `file_len`: a `data` chunk
/// declaring more than 1 % more audio than the file holds means the file was cut short
/// (ffmpeg still reads what is there). Other files pass.
///
/// # Errors
/// [`MediaError::TruncatedWav`].
pub fn check_wav(head: &[u8], file_len: u64) -> Result<(), MediaError> {
    match wav_data_sizes(head, file_len) {
        Some((declared, present)) if present + present / 100 < declared => {
            Err(MediaError::TruncatedWav {
                declared_bytes: declared,
                present_bytes: present,
            })
        }
        _ => Ok(()),
    }
}

fn value_f64(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

fn value_u32(v: &serde_json::Value) -> Option<u32> {
    value_f64(v)
        .filter(|x| *x >= 0.0 && *x <= f64::from(u32::MAX))
        .map(|x| x.round() as u32)
}

/// For a RIFF/WAVE file: the `data` chunk's declared size and the bytes the file actually
/// holds after the chunk header, given the file's first bytes (`head`, enough to reach the
/// `data` chunk header, e.g. 64 KiB) and its length `file_len` in bytes. `None` for other
/// files, or when the `data` chunk is not within `head`. A declared size above what is present
/// means the file was cut short (layout: RIFF header, then `id:[u8;4] size:u32le` chunks,
/// padded to even sizes; <https://www.mmsp.ece.mcgill.ca/Documents/AudioFormats/WAVE/WAVE.html>).
pub fn wav_data_sizes(head: &[u8], file_len: u64) -> Option<(u64, u64)> {
    if head.len() < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12usize;
    while at + 8 <= head.len() {
        let id = &head[at..at + 4];
        let size = u64::from(u32::from_le_bytes(head[at + 4..at + 8].try_into().ok()?));
        if id == b"data" {
            // 0 and 0xFFFFFFFF are "unknown size" (streamed WAV): nothing to compare.
            if size == 0 || size == u64::from(u32::MAX) {
                return None;
            }
            let present = file_len.saturating_sub(at as u64 + 8);
            return Some((size, present));
        }
        at = at.checked_add(8 + size as usize + (size as usize & 1))?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    // Captured with ffprobe 5.1.9 on files made by ffmpeg (testsrc + espeak-ng
    // speech): `ffprobe -v error -show_entries format=duration:stream=index,\
    // codec_type,codec_name,sample_rate,channels -of json FILE`.
    const PROBE_MP4: &str = r#"{
    "programs": [

    ],
    "streams": [
        {
            "index": 0,
            "codec_name": "h264",
            "codec_type": "video"
        },
        {
            "index": 1,
            "codec_name": "aac",
            "codec_type": "audio",
            "sample_rate": "48000",
            "channels": 2
        }
    ],
    "format": {
        "duration": "10.600000"
    }
}"#;
    const PROBE_VIDEO_ONLY: &str = r#"{
    "programs": [

    ],
    "streams": [
        {
            "index": 0,
            "codec_name": "h264",
            "codec_type": "video"
        }
    ],
    "format": {
        "duration": "3.000000"
    }
}"#;
    const PROBE_WAV: &str = r#"{
    "programs": [

    ],
    "streams": [
        {
            "index": 0,
            "codec_name": "pcm_s16le",
            "codec_type": "audio",
            "sample_rate": "16000",
            "channels": 1
        }
    ],
    "format": {
        "duration": "10.432000"
    }
}"#;
    const PROBE_OPUS: &str = r#"{"programs": [], "streams": [{"index": 0, "codec_name": "opus",
        "codec_type": "audio", "sample_rate": "48000", "channels": 1}],
        "format": {"duration": "10.419000"}}"#;
    // ffprobe on an empty file / random bytes: exit 1, stdout is this.
    const PROBE_UNREADABLE: &str = "{\n\n}\n";
    // Random bytes recognised as LRC lyrics (download.md §5.2).
    const PROBE_LRC: &str = r#"{"streams": [{"index": 0, "codec_name": "text",
        "codec_type": "subtitle"}], "format": {"duration": "N/A"}}"#;

    #[test]
    fn probe_mp4_with_audio() {
        let info = parse_ffprobe(PROBE_MP4).expect("parse");
        assert_eq!(info.duration_s, Some(10.6));
        assert!(info.has_video);
        assert_eq!(
            info.audio_streams,
            vec![AudioStream {
                index: Some(1),
                codec: Some("aac".into()),
                sample_rate_hz: Some(48_000),
                channels: Some(2),
            }]
        );
        assert_eq!(info.require_audio().map(|a| a.index), Ok(Some(1)));
    }

    #[test]
    fn probe_video_only_has_no_audio() {
        let info = parse_ffprobe(PROBE_VIDEO_ONLY).expect("parse");
        assert_eq!(info.duration_s, Some(3.0));
        assert!(info.has_video);
        assert!(info.audio_streams.is_empty());
        let err = info.require_audio().expect_err("no audio");
        assert_eq!(err, MediaError::NoAudioStream);
        assert_eq!(err.to_string(), "the media has no audio stream");
        assert!(!err.is_retryable());
        assert!(!err.is_broken());
    }

    #[test]
    fn probe_wav_and_opus() {
        let wav = parse_ffprobe(PROBE_WAV).expect("parse");
        assert!(!wav.has_video);
        assert_eq!(wav.duration_s, Some(10.432));
        let a = wav.require_audio().expect("audio");
        assert_eq!(a.codec.as_deref(), Some("pcm_s16le"));
        assert_eq!(a.sample_rate_hz, Some(WAV_SAMPLE_RATE_HZ));
        assert_eq!(a.channels, Some(u32::from(WAV_CHANNELS)));
        let opus = parse_ffprobe(PROBE_OPUS).expect("parse");
        assert_eq!(opus.audio_streams[0].codec.as_deref(), Some("opus"));
        assert_eq!(opus.duration_s, Some(10.419));
    }

    #[test]
    fn probe_unreadable_and_garbage() {
        let e = parse_ffprobe(PROBE_UNREADABLE).expect_err("empty object");
        assert!(matches!(e, MediaError::Probe(_)));
        assert!(!e.is_retryable());
        assert!(matches!(parse_ffprobe(""), Err(MediaError::Probe(_))));
        assert!(matches!(
            parse_ffprobe("not json"),
            Err(MediaError::Probe(_))
        ));
        let lrc = parse_ffprobe(PROBE_LRC).expect("parse");
        assert_eq!(lrc.duration_s, None);
        assert_eq!(lrc.require_audio(), Err(MediaError::NoAudioStream));
    }

    #[test]
    fn ffprobe_arg_vector() {
        let v = ffprobe_args(Path::new("/job/media.m4a"));
        let v: Vec<&str> = v.iter().filter_map(|s| s.to_str()).collect();
        assert_eq!(
            v,
            [
                "-v",
                "error",
                "-show_entries",
                "format=duration:stream=index,codec_type,codec_name,sample_rate,channels",
                "-of",
                "json",
                "/job/media.m4a"
            ]
        );
        let v = ffprobe_args(Path::new("-x.m4a"));
        assert_eq!(v.last().map(|s| s.as_os_str()), Some("./-x.m4a".as_ref()));
    }

    #[test]
    fn ffmpeg_arg_vector() {
        let v = ffmpeg_to_wav_args(
            Path::new("/job/media.webm"),
            Path::new("/job/audio.wav.tmp"),
        );
        let v: Vec<&str> = v.iter().filter_map(|s| s.to_str()).collect();
        assert_eq!(
            v.join(" "),
            "-nostdin -hide_banner -loglevel error -nostats -progress pipe:1 -y \
             -i /job/media.webm -map 0:a:0 -vn -sn -dn -ac 1 -ar 16000 -c:a pcm_s16le \
             -f wav /job/audio.wav.tmp"
        );
        let v = ffmpeg_to_wav_args(&PathBuf::from("-in.m4a"), &PathBuf::from("-out.wav"));
        assert!(v.iter().any(|a| a == "./-in.m4a"));
        assert_eq!(v.last().map(|s| s.as_os_str()), Some("./-out.wav".as_ref()));
    }

    // Captured: `ffmpeg … -progress pipe:1 … -f wav out.tmp` on a 10.6 s mp4.
    const PROGRESS: &str = "bitrate= 286.7kbits/s\ntotal_size=728\nout_time_us=20313\n\
out_time_ms=20313\nout_time=00:00:00.020313\ndup_frames=0\ndrop_frames=0\nspeed= 655x\n\
progress=continue\nbitrate= 256.1kbits/s\ntotal_size=333902\nout_time_us=10432000\n\
out_time_ms=10432000\nout_time=00:00:10.432000\ndup_frames=0\ndrop_frames=0\nspeed= 143x\n\
progress=end\n";

    #[test]
    fn progress_lines() {
        let events: Vec<FfmpegProgress> = PROGRESS
            .lines()
            .filter_map(parse_ffmpeg_progress_line)
            .collect();
        assert_eq!(events.len(), 8);
        assert_eq!(events[0].out_time_s, Some(0.020313));
        assert_eq!(events[0].state, None);
        assert_eq!(events[3].state, Some(ProgressState::Continue));
        assert_eq!(events[3].out_time_s, None);
        // out_time_us, out_time_ms and out_time all agree (ms is µs too).
        for e in &events[4..7] {
            let t = e.out_time_s.expect("time");
            assert!((t - 10.432).abs() < 1e-9, "{e:?}");
        }
        assert_eq!(events[7].state, Some(ProgressState::End));
        assert_eq!(parse_ffmpeg_progress_line("out_time_us=N/A"), None);
        assert_eq!(parse_ffmpeg_progress_line("out_time=N/A"), None);
        assert_eq!(
            parse_ffmpeg_progress_line("out_time_us=-9223372036854775807"),
            None
        );
        assert_eq!(parse_ffmpeg_progress_line("speed=N/A"), None);
        assert_eq!(parse_ffmpeg_progress_line("garbage"), None);
        assert_eq!(
            parse_ffmpeg_progress_line("out_time=01:02:03.500000\r\n"),
            Some(FfmpegProgress {
                out_time_s: Some(3723.5),
                state: None
            })
        );
    }

    #[test]
    fn percent() {
        assert_eq!(
            progress_percent(59.74, Some(600.0)).map(|p| (p * 100.0).round()),
            Some(996.0)
        );
        assert_eq!(progress_percent(10.432, Some(10.4)), Some(100.0));
        assert_eq!(progress_percent(1.0, None), None);
        assert_eq!(progress_percent(1.0, Some(0.0)), None);
    }

    #[test]
    fn decoded_length_boundaries() {
        // Short clips: the 2 s floor applies.
        assert_eq!(check_length(10.0, 8.0), Ok(()));
        assert!(check_length(10.0, 7.99).is_err());
        // 2 % applies above 100 s: 600 s → 12 s tolerance.
        assert_eq!(check_length(600.0, 588.0), Ok(()));
        let e = check_length(600.0, 587.9).expect_err("truncated");
        assert_eq!(
            e,
            MediaError::Truncated {
                expected_s: 600.0,
                decoded_s: 587.9
            }
        );
        assert!(!e.is_retryable());
        assert!(e.is_broken());
        // Exactly 100 s: both rules give 2 s.
        assert_eq!(check_length(100.0, 98.0), Ok(()));
        assert!(check_length(100.0, 97.9).is_err());
        // Longer output and unknown expectations pass.
        assert_eq!(check_length(10.6, 10.432), Ok(()));
        assert_eq!(check_length(10.0, 12.0), Ok(()));
        assert_eq!(check_length(0.0, 0.0), Ok(()));
        assert_eq!(check_length(f64::NAN, 1.0), Ok(()));
        // Real truncations (download.md §5.2 and this box).
        assert!(check_length(21.8, 3.776).is_err());
        assert!(check_length(21.85, 7.95).is_err());
        assert!(check_length(10.6, 1.856).is_err());
        assert!(check_length(10.0, f64::NAN).is_err());
        let msg = check_length(21.85, 7.95)
            .expect_err("truncated")
            .to_string();
        assert_eq!(
            msg,
            "the media is truncated: its audio ends at 8.0 s but the file declares 21.9 s"
        );
    }

    #[test]
    fn wav_data_sizes_find_truncation() {
        // 44-byte header: RIFF, fmt (16 bytes), data of 32000 bytes.
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&(36u32 + 32_000).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&[1, 0, 1, 0, 0x80, 0x3e, 0, 0, 0, 0x7d, 0, 0, 2, 0, 16, 0]);
        h.extend_from_slice(b"data");
        h.extend_from_slice(&32_000u32.to_le_bytes());
        assert_eq!(wav_data_sizes(&h, 44 + 32_000), Some((32_000, 32_000)));
        assert_eq!(wav_data_sizes(&h, 44 + 10_000), Some((32_000, 10_000)));
        assert_eq!(check_wav(&h, 44 + 32_000), Ok(()));
        // Within 1 %: passes; beyond: the file was cut short.
        assert_eq!(check_wav(&h, 44 + 31_700), Ok(()));
        let e = check_wav(&h, 44 + 10_000).expect_err("cut short");
        assert!(e.is_broken());
        assert_eq!(
            e.describe("the media file"),
            "the media file is truncated: its WAV header declares 32000 bytes of audio but it holds 10000"
        );
        assert_eq!(check_wav(b"ID3\x04 not a wav file", 100), Ok(()));
        assert_eq!(wav_data_sizes(b"ID3\x04 not a wav file", 100), None);
        // Streamed WAV (size unknown) is not judged.
        let n = h.len();
        h[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(wav_data_sizes(&h, 1000), None);
    }

    #[test]
    fn audio_packets_arg_vector() {
        let v = audio_packets_args(Path::new("/job/.tmp/media.m4a"));
        let v: Vec<&str> = v.iter().filter_map(|s| s.to_str()).collect();
        assert_eq!(
            v.join(" "),
            "-nostdin -hide_banner -loglevel error -nostats -progress pipe:1 \
             -i /job/.tmp/media.m4a -map 0:a:0 -c copy -f null -"
        );
        let v = audio_packets_args(Path::new("-x.m4a"));
        assert!(v.iter().any(|a| a == "./-x.m4a"));
    }

    #[test]
    fn broken_media_sentences() {
        // Captured: ffprobe 5.1.9 on the first 60 % of an M4A without faststart.
        let stderr = "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5585d293c400] moov atom not found\n\
                      nofs-cut.m4a: Invalid data found when processing input\n";
        assert!(missing_index(stderr));
        assert!(!missing_index(
            "x.mp4: Invalid data found when processing input"
        ));
        let subject = "the downloaded media";
        assert_eq!(
            MediaError::MissingIndex.describe(subject),
            "the downloaded media is truncated: its MP4 index (moov atom) is missing, as in a file cut short"
        );
        let cut = MediaError::Truncated {
            expected_s: 600.0,
            decoded_s: 357.424762,
        };
        assert_eq!(
            cut.describe(subject),
            "the downloaded media is truncated: its audio ends at 357.4 s but the file declares 600.0 s"
        );
        assert_eq!(
            MediaError::Corrupt("Invalid data found when processing input".into()).describe(subject),
            "the downloaded media is corrupt: ffmpeg could not read its audio to the end (Invalid data found when processing input)"
        );
        assert!([
            MediaError::MissingIndex,
            cut,
            MediaError::Corrupt(String::new())
        ]
        .iter()
        .all(MediaError::is_broken));
        assert!(!MediaError::Probe("x".into()).is_broken());
        assert_eq!(
            MediaError::NoAudioStream.describe(subject),
            "the media has no audio stream"
        );
    }
}
