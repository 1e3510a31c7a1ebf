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
use url2png_testkit::{Fixtures, FontSamples, Page, TestAws};

use crate::support::*;

/// The RGB pixels of cell (`row`, `col`), `side` pixels square, of a
/// decoded image `width` wide.
fn cell(rgb: &[u8], width: u32, samples: usize, side: u32, row: u32, col: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for y in row * side..(row + 1) * side {
        let start = ((y * width + col * side) as usize) * samples;
        let end = start + side as usize * samples;
        out.extend_from_slice(&rgb[start..end]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_renders_as_glyphs_not_boxes() {
    let aws = TestAws::start().await;
    let fixtures = Fixtures::start().await;
    let fonts = FontSamples::get();
    let side = fonts.cell;
    fixtures.page("/scripts", Page::html(fonts.page()));
    let worker = start_worker(&aws, &[]).await;
    let columns = fonts.columns;
    let width = side * columns as u32;
    let height = side * (fonts.scripts.len() as u32 + 1);
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
    let blank = cell(&pixels, width, samples, side, 0, 1);
    let missing = cell(&pixels, width, samples, side, 0, 0);
    assert_ne!(missing, blank, "the missing-glyph box is drawn");

    let mut boxed = Vec::new();
    for (i, (script, chars)) in fonts.scripts.iter().enumerate() {
        let row = i as u32 + 1;
        let cells: Vec<Vec<u8>> = (0..columns as u32)
            .map(|col| cell(&pixels, width, samples, side, row, col))
            .collect();
        let boxes = cells.iter().filter(|c| **c == missing).count();
        let blanks = cells.iter().filter(|c| **c == blank).count();
        let mut distinct = cells.clone();
        distinct.sort();
        distinct.dedup();
        if boxes > 0 || blanks > 0 || distinct.len() < cells.len() {
            boxed.push(format!(
                "{script} ({chars}): {boxes} boxes, {blanks} blank, {} distinct of {columns}",
                distinct.len()
            ));
        }
    }
    assert!(boxed.is_empty(), "scripts without a font: {boxed:?}");
}
