//! The fonts check's page (`testkit/fonts.json`, which the container
//! checks read too): one row per script, each character alone in a square
//! cell, under a first row holding a code point no font has.

use std::sync::OnceLock;

use serde_json::Value;

/// The scripts, their sample characters and the page's geometry.
#[derive(Debug)]
pub struct FontSamples {
    /// A cell's side, in CSS pixels.
    pub cell: u32,
    /// How many characters a row holds (every script has as many).
    pub columns: usize,
    font_size: u32,
    missing: String,
    /// (script, five distinct characters in it).
    pub scripts: Vec<(String, String)>,
}

impl FontSamples {
    /// The samples, read once from `testkit/fonts.json`.
    pub fn get() -> &'static FontSamples {
        static SAMPLES: OnceLock<FontSamples> = OnceLock::new();
        SAMPLES.get_or_init(|| {
            let doc: Value =
                serde_json::from_str(include_str!("../fonts.json")).expect("fonts.json is JSON");
            let number = |key: &str| {
                doc[key]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or_else(|| panic!("fonts.json: {key} is not a number"))
            };
            let scripts = doc["scripts"]
                .as_array()
                .expect("fonts.json: scripts is a list")
                .iter()
                .map(|pair| match (pair[0].as_str(), pair[1].as_str()) {
                    (Some(name), Some(chars)) => (name.to_owned(), chars.to_owned()),
                    _ => panic!("fonts.json: {pair} is not [script, characters]"),
                })
                .collect::<Vec<(String, String)>>();
            let columns = scripts.first().map_or(0, |(_, c)| c.chars().count());
            for (name, chars) in &scripts {
                assert_eq!(
                    chars.chars().count(),
                    columns,
                    "fonts.json: {name} has not as many characters as the others"
                );
            }
            FontSamples {
                cell: number("cell"),
                columns,
                font_size: number("font_size"),
                missing: doc["missing"]
                    .as_str()
                    .expect("fonts.json: missing is a string")
                    .to_owned(),
                scripts,
            }
        })
    }

    /// The page: row 0 is the missing glyph then blank cells; row `i + 1`
    /// is `scripts[i]`.
    pub fn page(&self) -> String {
        let row = |chars: &str| -> String {
            let cells: String = chars.chars().map(|c| format!("<span>{c}</span>")).collect();
            format!("<div>{cells}</div>")
        };
        let mut rows = row(&self.missing);
        for (_, chars) in &self.scripts {
            rows.push_str(&row(chars));
        }
        let (cell, size) = (self.cell, self.font_size);
        format!(
            "<!doctype html><meta charset=utf-8><style>\
             html, body {{ margin: 0; background: #fff; color: #000; }}\
             div {{ height: {cell}px; white-space: nowrap; }}\
             span {{ display: inline-block; width: {cell}px; height: {cell}px; overflow: hidden; \
             font-size: {size}px; line-height: {cell}px; text-align: center; vertical-align: top; }}\
             </style>{rows}"
        )
    }
}
