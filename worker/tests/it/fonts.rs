//! The fonts the worker's Chromium needs are there: text in each script
//! renders as glyphs, not as the "missing glyph" box.
//!
//! Each character is drawn alone in a fixed cell. A script without a font
//! draws every character as the same box, the one a Private Use Area code
//! point (which no font has) draws; a script with one draws as many
//! different cells as it has characters.

use std::time::Duration;

use url2png_core::job::RenderOptions;
use url2png_core::{JobMessage, KeyLayout};
use url2png_testkit::{Fixtures, Page, TestAws};

use crate::support::*;

const CELL: u32 = 48;

/// Five distinct characters per script.
const SCRIPTS: [(&str, &str); 9] = [
    ("Latin", "AgQ&ß"),
    ("Greek", "αβγδω"),
    ("Cyrillic", "жщюяЖ"),
    ("Hebrew", "אבגדש"),
    ("Chinese", "中文字體测"),
    ("Japanese", "あカ漢字ゑ"),
    ("Emoji", "😀🚀🌍🎉🐍"),
    ("Arabic", "ضظعغق"),
    ("Devanagari", "कखगघञ"),
];

/// A page with one row per script and a first row of the box itself.
fn page() -> String {
    let row = |chars: &str| -> String {
        chars
            .chars()
            .map(|c| format!("<span>{c}</span>"))
            .collect::<String>()
    };
    let mut rows = format!("<div>{}</div>", row("\u{e000}"));
    for (_, chars) in SCRIPTS {
        rows.push_str(&format!("<div>{}</div>", row(chars)));
    }
    format!(
        "<!doctype html><meta charset=utf-8><style>
        html, body {{ margin: 0; background: #fff; color: #000; }}
        div {{ height: {CELL}px; white-space: nowrap; }}
        span {{ display: inline-block; width: {CELL}px; height: {CELL}px; overflow: hidden;
                font-size: 32px; line-height: {CELL}px; text-align: center; vertical-align: top; }}
        </style>{rows}"
    )
}

/// The RGB pixels of cell (`row`, `col`) of a decoded image `width` wide.
fn cell(rgb: &[u8], width: u32, samples: usize, row: u32, col: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for y in row * CELL..(row + 1) * CELL {
        let start = ((y * width + col * CELL) as usize) * samples;
        let end = start + CELL as usize * samples;
        out.extend_from_slice(&rgb[start..end]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_renders_as_glyphs_not_boxes() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    fixtures.page("/scripts", Page::html(page()));
    let worker = start_worker(&aws, &[]).await;
    let width = CELL * 5;
    let height = CELL * (SCRIPTS.len() as u32 + 1);
    let job = JobMessage::new(
        fixtures.url("/scripts"),
        RenderOptions {
            width,
            height,
            ..RenderOptions::default()
        },
    );
    send_jobs(&aws, std::slice::from_ref(&job)).await;
    let key = KeyLayout::default().image(job.id, job.options.format);
    wait_for("the image", Duration::from_secs(60), || async {
        keys(&aws).await.contains(&key).then_some(())
    })
    .await;
    worker.stop().await;

    let png = get(&aws, &key).await;
    let mut reader = png::Decoder::new(std::io::Cursor::new(&png))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (width, height));
    let samples = info.color_type.samples();
    let blank = cell(&pixels, width, samples, 0, 1);
    let missing = cell(&pixels, width, samples, 0, 0);
    assert_ne!(missing, blank, "the missing-glyph box is drawn");

    let mut boxed = Vec::new();
    for (i, (script, chars)) in SCRIPTS.iter().enumerate() {
        let row = i as u32 + 1;
        let cells: Vec<Vec<u8>> = (0..5)
            .map(|col| cell(&pixels, width, samples, row, col))
            .collect();
        let boxes = cells.iter().filter(|c| **c == missing).count();
        let blanks = cells.iter().filter(|c| **c == blank).count();
        let mut distinct = cells.clone();
        distinct.sort();
        distinct.dedup();
        if boxes > 0 || blanks > 0 || distinct.len() < cells.len() {
            boxed.push(format!(
                "{script} ({chars}): {boxes} boxes, {blanks} blank, {} distinct of 5",
                distinct.len()
            ));
        }
    }
    assert!(boxed.is_empty(), "scripts without a font: {boxed:?}");
}
