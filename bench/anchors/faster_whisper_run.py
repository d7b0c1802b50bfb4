"""The faster-whisper anchor of `tubescribe bench` (P3): transcribes one WAV with one model
directory the way tubescribe's transcribe stage does (greedy, no VAD, the language given for
English-only models) and prints the wall seconds of each run as JSON, model load excluded.
With GUARD_DIR, each run also makes the call tubescribe's language guard makes for an
English-only model: the multilingual model in GUARD_DIR identifies the language of the first
15 s (one encoder pass over a 30 s window, CTranslate2's detect_language); its seconds are
printed apart (`guard_walls_s`) and included in `walls_s`.

usage: faster_whisper_run.py WAV MODEL_DIR THREADS COMPUTE_TYPE RUNS [LANGUAGE [GUARD_DIR]]
(LANGUAGE "" = detect it)
"""
import json
import sys
import time
import wave

import numpy as np
from faster_whisper import WhisperModel


def main() -> None:
    wav, model_dir, threads, compute_type, runs = sys.argv[1:6]
    language = (sys.argv[6] or None) if len(sys.argv) > 6 else None  # "" = detect
    guard_dir = sys.argv[7] if len(sys.argv) > 7 else None
    with wave.open(wav) as w:
        if w.getframerate() != 16000 or w.getnchannels() != 1:
            sys.exit(f"{wav}: not 16 kHz mono")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    model = WhisperModel(
        model_dir, device="cpu", compute_type=compute_type, cpu_threads=int(threads), num_workers=1
    )
    guard = None
    if guard_dir:
        guard = WhisperModel(
            guard_dir, device="cpu", compute_type=compute_type, cpu_threads=int(threads), num_workers=1
        )
    walls, guard_walls, words = [], [], 0
    for _ in range(int(runs)):
        t = time.perf_counter()
        if guard is not None:
            guard.detect_language(audio[: 15 * 16000])
            guard_walls.append(time.perf_counter() - t)
        segments, _info = model.transcribe(audio, beam_size=1, language=language, vad_filter=False)
        text = " ".join(s.text for s in segments)  # the generator decodes here
        walls.append(time.perf_counter() - t)
        words = len(text.split())
    print(json.dumps({"walls_s": walls, "guard_walls_s": guard_walls, "words": words}))


if __name__ == "__main__":
    main()
