//! Captions-first, playlists and chapters (issue 17, items 4–6), through the real
//! `tubescribe process` with the scripted yt-dlp stand-in ([`fake_ytdlp`]), whose captions
//! files and flat-playlist JSON follow yt-dlp's own formats: a video without captions is
//! transcribed by Whisper; with human-made captions and `--captions prefer` the transcript
//! comes from them (no `audio.wav`, no Whisper, `source: captions`); `--captions only` without
//! them fails permanently with one sentence; a playlist of 3 becomes 3 tasks and a batch
//! record, `--max-videos 2` two; the video's chapters stay in the manifest and head the
//! summary's chapters. Through a server: the same with `POST /api/tasks` and `tubescribe submit`,
//! and the batch's `batch.created` event on SSE.

mod common;

use std::path::Path;

use common::*;

/// Runs `tubescribe` with the stand-in as yt-dlp and a 1 MB free-space minimum.
fn run(data: &Path, script: &Path, args: &[&str]) -> Run {
    Env::new(data)
        .var("TUBESCRIBE_MIN_FREE_MB", "1")
        .var("TUBESCRIBE_YTDLP", script.to_str().unwrap())
        .bin(args)
        .run()
}

/// [`run`], asserting that it succeeded.
fn run_ok(data: &Path, script: &Path, args: &[&str]) -> Run {
    let r = run(data, script, args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

/// The video's human-made English captions as YouTube serves them through yt-dlp.
const HUMAN_VTT: &str = "WEBVTT\nKind: captions\nLanguage: en\n\n\
00:00:00.500 --> 00:00:04.000\nAnd so, my fellow Americans,\n\n\
00:00:04.000 --> 00:00:08.000\nask not what your country\ncan do for you.\n\n\
00:00:08.000 --> 00:00:11.000\nAsk what you can do for your country.\n";

/// YouTube's automatic captions (the rolling layout with word times) in English.
const AUTO_VTT: &str = "WEBVTT\nKind: captions\nLanguage: en\n\n\
00:00:00.160 --> 00:00:02.869 align:start position:0%\n \nand<00:00:00.480><c> so</c><00:00:00.719><c> my</c>\n\n\
00:00:02.869 --> 00:00:02.879 align:start position:0%\nand so my\n \n\n\
00:00:02.879 --> 00:00:05.110 align:start position:0%\nand so my\nfellow<00:00:03.199><c> Americans</c>\n";

fn read(data: &Path, task: &str, file: &str) -> String {
    std::fs::read_to_string(data.join("tasks").join(task).join(file)).unwrap()
}

fn exists(data: &Path, task: &str, file: &str) -> bool {
    data.join("tasks").join(task).join(file).exists()
}

/// The argument vectors the stand-in was called with.
fn calls(fake: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(fake.join("calls.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn captions_first_and_chapters() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake_ytdlp(&fake);
    let (wav, _) = speech(tmp.path(), "jfk", ENGLISH_CLIPS[0].1);
    let media = wav.to_str().unwrap();
    let chapters = serde_json::json!([
        {"start_time": 0.0, "end_time": 4.0, "title": "Opening"},
        {"start_time": 4.0, "end_time": 11.0, "title": "The ask"}
    ]);
    // No captions at all; human-made captions (and chapters); automatic captions only.
    scenario(
        &fake,
        "NoCaptions1",
        serde_json::json!({"meta": {"id": "NoCaptions1", "title": "No captions", "duration": 11}, "media": media}),
    );
    scenario(
        &fake,
        "HumanCapt01",
        serde_json::json!({"meta": {"id": "HumanCapt01", "title": "Human captions", "duration": 11, "chapters": chapters},
            "media": media, "subs": {"en": HUMAN_VTT, "de": "WEBVTT\n\n00:00.000 --> 00:01.000\nUnd so\n"},
            "auto_subs": {"en": AUTO_VTT}}),
    );
    scenario(
        &fake,
        "AutoCapt001",
        serde_json::json!({"meta": {"id": "AutoCapt001", "title": "Auto captions", "duration": 11},
            "media": media, "auto_subs": {"en": AUTO_VTT}}),
    );
    let data = tmp.path().join("data");
    run_ok(
        &data,
        &script,
        &[
            "process",
            "--captions",
            "prefer",
            "https://youtu.be/NoCaptions1",
            "https://youtu.be/HumanCapt01",
        ],
    );

    // No captions: Whisper ran.
    let t = &tid("yt-NoCaptions1", "-ccp-en");
    let m = manifest(&data, t);
    assert_eq!(m["status"], "completed", "{m:#}");
    assert_eq!(m["options"]["captions"], "prefer");
    assert_eq!(m["stages"]["transcribe"]["detail"]["source"], "whisper");
    assert!(exists(&data, t, "audio.wav"));
    assert!(!exists(&data, t, "captions.vtt"));
    let text = read(&data, t, "transcript.txt").to_lowercase();
    assert!(text.contains("country"), "{text}");

    // Human-made captions: the transcript is theirs, Whisper did not run.
    let t = &tid("yt-HumanCapt01", "-ccp-en");
    let m = manifest(&data, t);
    assert_eq!(m["status"], "completed", "{m:#}");
    let d = &m["stages"]["transcribe"]["detail"];
    assert_eq!(d["source"], "captions", "{d:#}");
    assert_eq!(d["captions_lang"], "en");
    assert_eq!(d["captions_kind"], "human");
    assert!(d.get("asr_wall_s").is_none(), "{d:#}");
    assert!(
        !exists(&data, t, "audio.wav"),
        "whisper's input was decoded"
    );
    assert_eq!(read(&data, t, "captions.vtt"), HUMAN_VTT);
    let tj: serde_json::Value = serde_json::from_str(&read(&data, t, "transcript.json")).unwrap();
    assert_eq!(tj["model"], "youtube-captions");
    assert_eq!(tj["language"], "en");
    let segs: Vec<(u64, u64, &str)> = tj["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["start_ms"].as_u64().unwrap(),
                s["end_ms"].as_u64().unwrap(),
                s["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        segs,
        [
            (500, 4000, "And so, my fellow Americans,"),
            (4000, 8000, "ask not what your country can do for you."),
            (8000, 11000, "Ask what you can do for your country."),
        ]
    );
    let srt = read(&data, t, "transcript.srt");
    assert!(srt.starts_with("1\n00:00:00,500 --> "), "{srt}");
    let vtt = read(&data, t, "transcript.vtt");
    assert!(vtt.starts_with("WEBVTT"), "{vtt}");
    // yt-dlp was asked for human-made English captions only.
    let call = calls(&fake)
        .into_iter()
        .find(|a| a.last().unwrap().ends_with("HumanCapt01"))
        .unwrap();
    let after = |flag: &str| call[call.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert!(call.contains(&"--write-subs".to_string()));
    assert!(!call.contains(&"--write-auto-subs".to_string()));
    assert_eq!(after("--sub-langs"), "en,en-.*");
    assert_eq!(after("--sub-format"), "vtt");
    // Chapters: kept in the manifest, and the summary's chapters are the video's.
    let ch: Vec<(u64, &str)> = m["video"]["chapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["start_ms"].as_u64().unwrap(),
                c["title"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ch, [(0, "Opening"), (4000, "The ask")]);
    let sj: serde_json::Value = serde_json::from_str(&read(&data, t, "summary.json")).unwrap();
    let titles: Vec<&str> = sj["chapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Opening", "The ask"]);
    let md = read(&data, t, "summary.md");
    assert!(md.contains("Opening") && md.contains("The ask"), "{md}");

    // `only` without human-made captions: a permanent failure, one sentence.
    let r = run(
        &data,
        &script,
        &[
            "process",
            "--captions",
            "only",
            "https://youtu.be/AutoCapt001",
        ],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let m = manifest(&data, &tid("yt-AutoCapt001", "-cco-en"));
    assert_eq!(m["status"], "failed");
    assert_eq!(m["error"]["stage"], "download");
    assert_eq!(
        m["error"]["message"],
        "the video has no human-made captions in en (captions: only); submit it with captions prefer or never to transcribe its audio"
    );
    assert_eq!(m["error"]["retryable"], false);
    assert_eq!(m["stages"]["download"]["attempts"], 1);
    assert!(
        r.stderr.contains("has no human-made captions in en"),
        "{}",
        r.stderr
    );

    // The same video with automatic captions allowed: its rolling lines, once each.
    run_ok(
        &data,
        &script,
        &[
            "process",
            "--captions",
            "only",
            "--auto-captions",
            "https://youtu.be/AutoCapt001",
        ],
    );
    let t = &tid("yt-AutoCapt001", "-ccoa-en");
    let m = manifest(&data, t);
    assert_eq!(m["stages"]["transcribe"]["detail"]["captions_kind"], "auto");
    assert_eq!(
        read(&data, t, "transcript.txt").trim(),
        "and so my fellow Americans"
    );
}

#[test]
fn playlists_expand_into_tasks_and_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake_ytdlp(&fake);
    let (wav, _) = speech(tmp.path(), "jfk", ENGLISH_CLIPS[0].1);
    let ids = ["PlayItem001", "PlayItem002", "PlayItem003"];
    let mut entries = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // Captions keep these tasks short: no Whisper run per video.
        scenario(
            &fake,
            id,
            serde_json::json!({"meta": {"id": id, "title": format!("Talk {i}"), "duration": 11},
                "media": wav.to_str().unwrap(), "subs": {"en-GB": HUMAN_VTT}}),
        );
        entries.push(
            serde_json::json!({"_type": "url", "ie_key": "Youtube", "id": id,
            "url": format!("https://www.youtube.com/watch?v={id}"), "title": format!("Talk {i}"),
            "duration": 11.0, "channel_id": null, "live_status": null}),
        );
    }
    // yt-dlp's `-J --flat-playlist` object for a playlist (youtube:tab).
    let flat = serde_json::json!({"id": "PLtest0123", "title": "Three talks", "_type": "playlist",
        "entries": entries, "extractor": "youtube:tab", "extractor_key": "YoutubeTab",
        "webpage_url": "https://www.youtube.com/playlist?list=PLtest0123", "playlist_count": 3});
    std::fs::write(fake.join("flat.json"), flat.to_string()).unwrap();
    let url = "https://www.youtube.com/playlist?list=PLtest0123";
    let data = tmp.path().join("data");

    // Without --playlist: refused as before, nothing created.
    let r = run(&data, &script, &["process", url]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("playlists are not supported"),
        "{}",
        r.stderr
    );

    let r = run_ok(
        &data,
        &script,
        &["process", "--playlist", "--captions", "prefer", url],
    );
    let tasks: Vec<String> = ids
        .iter()
        .map(|id| tid(&format!("yt-{id}"), "-ccp-en"))
        .collect();
    assert_eq!(task_ids(&data), tasks);
    let batches = batch_files(&data);
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    let bid = b["batch_id"].as_str().unwrap();
    assert!(
        r.stderr.contains(&format!("batch {bid} with 3 video(s)")),
        "{}",
        r.stderr
    );
    assert_eq!(b["kind"], "playlist");
    assert_eq!(b["url"], url);
    assert_eq!(b["title"], "Three talks");
    assert_eq!(b["max_videos"], 50);
    let items: Vec<(&str, &str, bool)> = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["video_id"].as_str().unwrap(),
                i["task_id"].as_str().unwrap(),
                i["existing"].as_bool().unwrap(),
            )
        })
        .collect();
    for (k, id) in ids.iter().enumerate() {
        assert_eq!(items[k], (*id, tasks[k].as_str(), false));
        let m = manifest(&data, &tasks[k]);
        assert_eq!(m["status"], "completed", "{m:#}");
        assert_eq!(m["batch_id"], bid);
        assert_eq!(
            m["stages"]["transcribe"]["detail"]["captions_lang"],
            "en-GB"
        );
    }
    let list_call = calls(&fake).into_iter().next().unwrap();
    assert!(list_call.contains(&"--flat-playlist".to_string()));
    assert_eq!(&list_call[list_call.len() - 2..], ["--", url]);

    // --max-videos 2: two videos, each joining its existing task.
    run_ok(
        &data,
        &script,
        &[
            "process",
            "--playlist",
            "--max-videos",
            "2",
            "--captions",
            "prefer",
            url,
        ],
    );
    let batches = batch_files(&data);
    assert_eq!(batches.len(), 2);
    let b2 = batches.iter().find(|b| b["batch_id"] != bid).unwrap();
    assert_eq!(b2["max_videos"], 2);
    let items = b2["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i["existing"] == true), "{b2:#}");
    assert_eq!(task_ids(&data).len(), 3);
    let last = calls(&fake)
        .into_iter()
        .rfind(|a| a.contains(&"--flat-playlist".to_string()))
        .unwrap();
    let i = last.iter().position(|a| a == "--playlist-items").unwrap();
    assert_eq!(last[i + 1], "1:2");
}

/// The batch records in `<data>/batches/`.
fn batch_files(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(data.join("batches"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// The API: `options.expand` + `maxVideos` in `POST /api/tasks` answer with the batch, and
/// `GET /api/batches/{id}` shows it with its tasks' statuses; a bad captions mode and a
/// playlist without `expand` are 400s; the expansion is a `batch.created` SSE event. The client
/// command `submit` sends its captions and playlist flags as these options and prints the
/// batch (`--json`: the answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_expands_a_playlist_into_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake_ytdlp(&fake);
    let (wav, _) = speech(tmp.path(), "jfk", ENGLISH_CLIPS[0].1);
    let mut entries = Vec::new();
    for id in ["ApiItem0001", "ApiItem0002", "ApiItem0003"] {
        scenario(
            &fake,
            id,
            serde_json::json!({"meta": {"id": id, "duration": 11}, "media": wav.to_str().unwrap(), "subs": {"en": HUMAN_VTT}}),
        );
        entries.push(
            serde_json::json!({"_type": "url", "ie_key": "Youtube", "id": id,
            "url": format!("https://www.youtube.com/watch?v={id}")}),
        );
    }
    let flat = serde_json::json!({"_type": "playlist", "id": "PLapi", "title": "API list", "entries": entries});
    std::fs::write(fake.join("flat.json"), flat.to_string()).unwrap();
    let data = tmp.path().join("data");
    let mut server = Env::new(&data)
        .var("TUBESCRIBE_MIN_FREE_MB", "1")
        .var("TUBESCRIBE_YTDLP", script.to_str().unwrap())
        .bin(&["serve", "--listen", "127.0.0.1:0"])
        .start();
    let base = server.wait_base_url();
    let c = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let c = c.clone();
        let url = format!("{base}/api/tasks");
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let url = "https://www.youtube.com/playlist?list=PLapi";
    let (s, body) = post(serde_json::json!({"link": url})).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = post(
        serde_json::json!({"link": url, "options": {"expand": true, "captions": "sometimes"}}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body.to_string()
            .contains("is not one of prefer, only, never"),
        "{body}"
    );
    let (s, body) = post(serde_json::json!({"link": url,
        "options": {"expand": true, "maxVideos": 2, "captions": "prefer"}}))
    .await;
    assert_eq!(s, 201, "{body}");
    let b = &body["batch"];
    assert_eq!(b["items"].as_array().unwrap().len(), 2, "{body:#}");
    assert_eq!(body["taskId"], tid("yt-ApiItem0001", "-ccp-en"));
    let bid = b["batch_id"].as_str().unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let r = c
            .get(format!("{base}/api/batches/{bid}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let got: serde_json::Value = r.json().await.unwrap();
        assert_eq!(got["title"], "API list");
        if got["statuses"] == serde_json::json!(["completed", "completed"]) {
            break;
        }
        assert!(t0.elapsed().as_secs() < 120, "{got:#}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let r = c
        .get(format!("{base}/api/batches/batch-0000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // SSE: the expansion was announced on the all-tasks stream with its batch and tasks.
    let b0 = batch_event(&base, bid).await;
    assert_eq!(b0["kind"], "playlist");
    assert_eq!(b0["title"], "API list");
    assert_eq!(
        b0["taskIds"],
        serde_json::json!([
            tid("yt-ApiItem0001", "-ccp-en"),
            tid("yt-ApiItem0002", "-ccp-en")
        ])
    );

    // The client command sends the same options: `submit --playlist --max-videos 3` answers
    // with the batch, the first two videos joining their tasks. `submit` runs `tubescribe
    // submit --server <base> <extra…> <input>` and checks its exit code.
    let submit = |extra: &[&str], input: &str, code: i32| {
        let mut a = vec!["submit".to_string(), "--server".to_string(), base.clone()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(input.to_string());
        let data = data.clone();
        async move {
            let r = tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                Env::new(&data).bin(&a).run()
            })
            .await
            .unwrap();
            assert_eq!(r.code, code, "{}\n{}", r.stdout, r.stderr);
            r
        }
    };
    let video = "https://youtu.be/ApiItem0002";
    for (extra, input, why) in [
        (&[][..], url, "playlists are not supported"),
        (
            &["--captions-lang", "english", "--captions", "prefer"][..],
            video,
            "captions language \"english\" is not a language code",
        ),
    ] {
        let r = submit(extra, input, 2).await;
        assert!(r.stderr.contains(why), "{}", r.stderr);
    }
    let playlist = ["--playlist", "--captions", "prefer", "--max-videos"];
    let r = submit(&[&playlist[..], &["3"]].concat(), url, 0).await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    let (bid3, head) = lines[0].split_once("  ").unwrap();
    assert!(bid3.starts_with("batch-") && bid3 != bid, "{}", r.stdout);
    assert_eq!(head, "playlist \"API list\": 3 video(s)");
    for (k, line) in lines[1..3].iter().enumerate() {
        let want = format!(
            "{}  completed  (existing task)",
            tid(&format!("yt-ApiItem000{}", k + 1), "-ccp-en")
        );
        assert_eq!(*line, want);
    }
    assert!(
        lines[3].starts_with(&format!("{}  ", tid("yt-ApiItem0003", "-ccp-en")))
            && !lines[3].contains("existing"),
        "{}",
        r.stdout
    );
    let b3 = batch_event(&base, bid3).await;
    assert_eq!(b3["taskIds"].as_array().unwrap().len(), 3, "{b3}");
    // --json: the API's answer, batch included.
    let r = submit(&[&["--json"], &playlist[..], &["1"]].concat(), url, 0).await;
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        v["batch"]["items"][0]["task_id"],
        tid("yt-ApiItem0001", "-ccp-en")
    );
    assert_eq!(v["batch"]["statuses"], serde_json::json!(["completed"]));
    // The captions flags reach the server: they name the task.
    let captions = [
        "--captions",
        "only",
        "--auto-captions",
        "--captions-lang",
        "de",
    ];
    let r = submit(&captions, video, 0).await;
    assert!(
        r.stdout
            .starts_with(&format!("{}  ", tid("yt-ApiItem0002", "-ccoa-de"))),
        "{}",
        r.stdout
    );
    drop(server);
}

/// The data of the `batch.created` event of batch `bid`, replayed from the oldest event of
/// the server's all-tasks stream (≤ 30 s).
async fn batch_event(base: &str, bid: &str) -> serde_json::Value {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/events/stream"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "0-0_0-0_0-0_0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut events = resp.bytes_stream().eventsource();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no batch.created for {bid}; saw {seen:?}"))
            .expect("the stream stays open")
            .unwrap();
        if e.event == "batch.created" {
            let d: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            if d["batchId"] == bid {
                assert!(d["at"].as_u64().is_some(), "{d}");
                return d;
            }
        }
        seen.push(e.event);
    }
}
