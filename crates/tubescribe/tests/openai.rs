//! The OpenAI-compatible API and uploads through real clients against `tubescribe serve`
//! (private data dir, embedded Redis, tiny.en): the official `openai` Python client
//! (`scripts/requirements-test.txt`) for `verbose_json` with word timestamps, SRT, a
//! translation refused by the English-only default model and a wrong model; `curl -F` for
//! `json`, the bearer token, the upload limit, Mandarin translated into English by base (and
//! refused by tiny.en) and `POST /api/tasks` as a form (a task that completes, and the same
//! bytes joining it).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "t0k-openai";

/// The client script: prints one JSON object with what each call returned.
const CLIENT: &str = r#"
import json, sys, time
import openai
base, token, wav = sys.argv[1:4]
client = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0, timeout=600)
out = {}
t0 = time.time()
with open(wav, "rb") as f:
    v = client.audio.transcriptions.create(model="tiny.en", file=f, response_format="verbose_json",
                                           timestamp_granularities=["word"])
out["verbose_s"] = time.time() - t0
out["verbose"] = {"text": v.text, "language": v.language, "duration": v.duration,
                  "segments": [s.model_dump() for s in v.segments],
                  "words": [w.model_dump() for w in v.words]}
with open(wav, "rb") as f:
    out["srt"] = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
def refused(call, model, error):
    """The error `call` (translations or transcriptions) raises for `model`, or None."""
    try:
        with open(wav, "rb") as f:
            call.create(model=model, file=f)
        return None
    except error as e:
        return {"status": e.status_code, "code": e.code, "type": e.type, "param": e.param,
                "body": e.response.json()}
out["translation"] = refused(client.audio.translations, "whisper-1", openai.BadRequestError)
out["wrong_model"] = refused(client.audio.transcriptions, "no-such-model", openai.NotFoundError)
try:
    bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    with open(wav, "rb") as f:
        bad.audio.transcriptions.create(model="whisper-1", file=f)
    out["wrong_key"] = None
except openai.AuthenticationError as e:
    out["wrong_key"] = {"status": e.status_code, "code": e.code}
out["models"] = sorted(m.id for m in client.models.list())
print(json.dumps(out))
"#;

/// Runs `curl -sS` with `args`; returns the HTTP status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is required (scripts/setup.sh --test)");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Polls `GET /api/tasks/{id}` until the task has ended (≤ 300 s) and returns its manifest.
fn wait_ended(base: &str, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (code, body) = curl(&[&format!("{base}/api/tasks/{id}")]);
        assert_eq!(code, 200, "{body}");
        let m = json(&body);
        let status = m["status"].as_str().unwrap().to_string();
        if [
            "completed",
            "completed_with_warnings",
            "failed",
            "cancelled",
        ]
        .contains(&status.as_str())
        {
            return m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "{id} still {status}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Starts the server: bearer token, a 1 MiB upload limit and a keep-alive of 1 s, so a
/// transcription's JSON answer is preceded by padding.
fn serve(data: &Path) -> (Proc, String) {
    let mut p = Env::new(data)
        .var("TUBESCRIBE_THREADS", "2")
        .var("TUBESCRIBE_API_TOKEN", TOKEN)
        .bin(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-upload-mb",
            "1",
            "--keep-alive-s",
            "1",
        ])
        .start();
    let base = p.wait_base_url();
    (p, base)
}

/// Checks an error the client script caught about the model: its `status`, OpenAI's `type`,
/// `param` `model`, `code`, and a message saying each of `says`.
fn model_error(e: &Value, status: u16, code: &str, says: &[&str]) {
    assert_eq!(e["status"], status, "{e}");
    assert_eq!(e["code"], code, "{e}");
    assert_eq!(e["type"], "invalid_request_error", "{e}");
    assert_eq!(e["param"], "model", "{e}");
    let msg = e["body"]["error"]["message"].as_str().unwrap();
    assert!(says.iter().all(|s| msg.contains(s)), "{msg}");
}

#[test]
fn openai_client_gets_transcripts_and_errors_in_openai_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let (wav, _) = speech(tmp.path(), "jfk", ENGLISH_CLIPS[0].1);
    let (_server, base) = serve(&tmp.path().join("data"));
    let script = tmp.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new(venv_python())
        .arg(&script)
        .args([&base, TOKEN, wav.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the openai client failed (is `openai` installed? scripts/setup.sh --test): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&String::from_utf8(out.stdout).unwrap());
    eprintln!(
        "verbose_json answered in {:.1} s",
        r["verbose_s"].as_f64().unwrap()
    );

    // verbose_json with words: the text, segments and words, times in seconds.
    let v = &r["verbose"];
    let text = v["text"].as_str().unwrap().to_lowercase();
    assert!(
        text.contains("ask not what your country can do for you"),
        "{text}"
    );
    assert_eq!(v["language"], "english");
    assert!((v["duration"].as_f64().unwrap() - 11.0).abs() < 0.5, "{v}");
    let segments = v["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s["id"], i);
        let (a, b) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        assert!(0.0 <= a && a < b && b <= 11.5, "{s}");
        assert!(s["avg_logprob"].as_f64().unwrap() <= 0.0, "{s}");
    }
    let words = v["words"].as_array().unwrap();
    assert!(words.len() >= 15, "{words:?}");
    assert_eq!(words[0]["word"].as_str().unwrap().to_lowercase(), "and");
    let starts: Vec<f64> = words.iter().map(|w| w["start"].as_f64().unwrap()).collect();
    assert!(starts.windows(2).all(|p| p[0] <= p[1]), "{starts:?}");
    assert!(words
        .iter()
        .all(|w| w["end"].as_f64().unwrap() >= w["start"].as_f64().unwrap()));

    // SRT (whisper-1 = the default model, so the same task): valid and the same words.
    let srt = r["srt"].as_str().unwrap();
    let cues =
        tubescribe::domain::transcript::parse_srt(srt).unwrap_or_else(|e| panic!("{e}: {srt}"));
    assert!(!cues.is_empty());
    let cue_text: String = cues
        .iter()
        .map(|c| c.text().replace('\n', " ") + " ")
        .collect();
    assert!(
        cue_text.to_lowercase().contains("your country"),
        "{cue_text}"
    );

    // whisper-1 is the default, English-only tiny.en: it cannot translate (400, OpenAI's shape,
    // naming a multilingual model), and nothing is submitted.
    let says = ["tiny.en is English-only", "model=base"];
    model_error(&r["translation"], 400, "unsupported_value", &says);

    // A wrong model: 404 in OpenAI's error shape.
    let says = ["no-such-model", "tiny.en"];
    model_error(&r["wrong_model"], 404, "model_not_found", &says);
    // A wrong key: 401, the client's AuthenticationError.
    assert_eq!(r["wrong_key"]["status"], 401);
    assert_eq!(r["wrong_key"]["code"], "invalid_api_key");
    // The models: installed ones and whisper-1.
    let models: Vec<&str> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        models.contains(&"tiny.en") && models.contains(&"whisper-1"),
        "{models:?}"
    );

    // One task for all of it (content + model), completed as usual.
    let ids = task_ids(&tmp.path().join("data"));
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].starts_with("upload-"), "{ids:?}");
    let m = wait_ended(&base, &ids[0]);
    assert_eq!(m["status"], "completed", "{m}");
}

#[test]
fn curl_form_uploads_make_tasks_and_are_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (wav, reference) = speech(tmp.path(), ENGLISH_CLIPS[1].0, ENGLISH_CLIPS[1].1);
    let (_server, base) = serve(&data);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let file = format!("file=@{}", wav.display());

    // POST /api/tasks as a form: a new task that completes.
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-F",
        &file,
        "-F",
        r#"options={"model":"tiny.en"}"#,
        &format!("{base}/api/tasks"),
    ]);
    assert_eq!(code, 201, "{body}");
    let created = json(&body);
    let id = created["taskId"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("upload-") && created["existing"] == false,
        "{created}"
    );
    let m = wait_ended(&base, &id);
    assert_eq!(m["status"], "completed", "{m}");
    let (code, txt) = curl(&[&format!("{base}/api/tasks/{id}/transcript.txt")]);
    assert_eq!(code, 200);
    let wer = tubescribe::domain::transcript::word_error_rate(&reference, &txt);
    assert!(wer < 0.3, "WER {wer}: {txt}");

    // The same bytes under another name join the task.
    let copy = tmp.path().join("renamed.wav");
    std::fs::copy(&wav, &copy).unwrap();
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-F",
        &format!("file=@{}", copy.display()),
        &format!("{base}/api/tasks"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["taskId"], id.as_str());
    assert_eq!(json(&body)["existing"], true);

    // `curl -F` to the OpenAI route with `whisper-1`, with and without the token.
    let transcribe = |file: &str, token: bool| {
        let url = format!("{base}/v1/audio/transcriptions");
        let mut args = vec!["-F", file, "-F", "model=whisper-1", &url];
        if token {
            args.extend(["-H", &auth]);
        }
        curl(&args)
    };
    // json is {text}, the same task.
    let (code, body) = transcribe(&file, true);
    assert_eq!(code, 200, "{body}");
    let t = json(&body);
    assert_eq!(t.as_object().unwrap().len(), 1, "{t}");
    assert!(
        t["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("apostle"),
        "{t}"
    );
    assert_eq!(task_ids(&data), vec![id.clone()]);

    // No token: 401 in each route's format.
    let (code, body) = transcribe(&file, false);
    assert_eq!(code, 401);
    assert_eq!(json(&body)["error"]["code"], "invalid_api_key", "{body}");
    let (code, body) = curl(&["-F", &file, &format!("{base}/api/tasks")]);
    assert_eq!(
        (code, json(&body)["code"].clone()),
        (401, "UNAUTHORIZED".into()),
        "{body}"
    );

    // Over the 1 MiB limit: 413 with a sentence, on both routes, and nothing kept.
    let big = tmp.path().join("big.wav");
    let samples: Vec<i16> = (0..700_000)
        .map(|i| ((i % 200) as i16 - 100) * 50)
        .collect();
    write_wav16k(&big, &samples);
    let big_file = format!("file=@{}", big.display());

    // A client that sends its whole body at once (no `Expect: 100-continue`, as the openai
    // client does) reads the refusal, not a reset: the server reads what the handler left
    // before it answers. Without that, 3 MB without a token gave curl "Send failure: Broken
    // pipe" 6 times in 40 here (2026-12-06); so 20 tries, each must get its 401, then 413s.
    let huge = tmp.path().join("huge.wav");
    write_wav16k(&huge, &vec![100i16; 1_500_000]);
    let huge_file = format!("file=@{}", huge.display());
    let url = format!("{base}/v1/audio/transcriptions");
    let no_expect = ["-H", "Expect:", "-F", &huge_file, "-F", "model=whisper-1"];
    for _ in 0..20 {
        let (code, body) = curl(&[&no_expect[..], &[url.as_str()]].concat());
        assert_eq!(code, 401, "{body}");
        assert_eq!(json(&body)["error"]["code"], "invalid_api_key", "{body}");
    }
    for _ in 0..5 {
        let (code, body) = curl(&[&no_expect[..], &["-H", &auth, url.as_str()]].concat());
        assert_eq!(code, 413, "{body}");
        assert_eq!(json(&body)["error"]["code"], "file_too_large", "{body}");
    }
    let (code, body) = curl(&["-H", &auth, "-F", &big_file, &format!("{base}/api/tasks")]);
    assert_eq!(code, 413, "{body}");
    let detail = json(&body)["detail"].as_str().unwrap().to_string();
    assert_eq!(
        detail,
        "the uploaded file is larger than the server's limit of 1 MiB (--max-upload-mb)"
    );
    let (code, body) = transcribe(&big_file, true);
    assert_eq!(code, 413, "{body}");
    let e = json(&body);
    assert_eq!(
        (e["error"]["code"].clone(), e["error"]["param"].clone()),
        ("file_too_large".into(), "file".into())
    );
    let part_files = std::fs::read_dir(data.join("uploads/.tmp"))
        .unwrap()
        .count();
    assert_eq!(part_files, 0);
    assert_eq!(task_ids(&data), vec![id]);

    // Mandarin translated into English by base: whisper's translate task, a task of its own
    // (`-base-tr`), English words and no Chinese characters; the answer's `language` is the
    // output's (OpenAI documents a translation's as "english"), the task's transcript keeps
    // the detected source language.
    let zh = repo_root().join("../shared/samples/aishell-BAC009S0724W0121.wav");
    assert!(
        zh.is_file(),
        "the Mandarin sample {} is missing (../shared/samples)",
        zh.display()
    );
    let zh_file = format!("file=@{}", zh.display());
    let translate = |model: &str, format: &str| {
        curl(&[
            "-H",
            &auth,
            "-F",
            &zh_file,
            "-F",
            &format!("model={model}"),
            "-F",
            &format!("response_format={format}"),
            &format!("{base}/v1/audio/translations"),
        ])
    };
    let (code, body) = translate("base", "verbose_json");
    assert_eq!(code, 200, "{body}");
    let v = json(body.trim());
    assert!(v.get("error").is_none(), "{body}");
    assert_eq!(v["task"], "translate", "{v}");
    assert_eq!(v["language"], "english", "{v}");
    let text = v["text"].as_str().unwrap();
    eprintln!("base translated the Mandarin sample as {text:?}");
    assert!(
        text.chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_ascii_punctuation() || c == ' '),
        "not ASCII Latin text: {text:?}"
    );
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let english = [
        "the",
        "of",
        "and",
        "a",
        "is",
        "in",
        "to",
        "this",
        "year",
        "market",
        "real",
        "estate",
        "association",
        "analysis",
        "agency",
        "city",
        "housing",
        "property",
        "analyzes",
        "analyses",
        "analyzed",
        "intermediary",
    ];
    let known = words.iter().filter(|w| english.contains(w)).count();
    assert!(known >= 3, "fewer than 3 common English words in {text:?}");
    let tr = task_ids(&data)
        .into_iter()
        .find(|t| t.ends_with("-base-tr"))
        .expect("a translation task");
    let (code, tj) = curl(&[&format!("{base}/api/tasks/{tr}/transcript.json")]);
    assert_eq!(code, 200, "{tj}");
    assert_eq!(json(&tj)["language"], "zh", "{tj}");
    let (code, m) = curl(&[&format!("{base}/api/tasks/{tr}")]);
    assert_eq!(code, 200);
    assert_eq!(json(&m)["options"]["translate"], true, "{m}");
    // `json` joins the same task.
    let (code, body) = translate("base", "json");
    assert_eq!(
        (code, json(body.trim())["text"].clone()),
        (200, v["text"].clone())
    );
    // tiny.en cannot translate: 400 in OpenAI's shape naming base, before any task exists.
    let before = task_ids(&data);
    let (code, body) = translate("tiny.en", "json");
    assert_eq!(code, 400, "{body}");
    let e = &json(&body)["error"];
    assert_eq!(
        (e["type"].clone(), e["param"].clone(), e["code"].clone()),
        (
            "invalid_request_error".into(),
            "model".into(),
            "unsupported_value".into()
        ),
        "{body}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("model=base"),
        "{body}"
    );
    assert_eq!(task_ids(&data), before);

    // A form without a file: 400 naming the field.
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-F",
        "model=whisper-1",
        &format!("{base}/v1/audio/transcriptions"),
    ]);
    assert_eq!(code, 400);
    assert_eq!(json(&body)["error"]["param"], "file", "{body}");
}
