//! The two page sets: the small default fixture page, and a realistic set
//! of documentation-like pages with many sub-resources (stylesheets, a web
//! font, scripts that build part of the page, images), a few hundred KB
//! each, served on every site.

use url2png_testkit::Fixtures;
use url2png_testkit::fixtures::Page;

/// Distinct realistic pages per site.
pub const REAL_PAGES: usize = 6;
const STYLESHEETS: usize = 2;
const SCRIPTS: usize = 3;
const IMAGES: usize = 10;

/// A font from Debian's fonts-liberation (installed by script/bootstrap).
const FONT: &str = "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf";

/// Register the realistic set on `site` under `/real/`.
pub fn register_real(site: &Fixtures) -> anyhow::Result<()> {
    let font = std::fs::read(FONT).map_err(|e| anyhow::anyhow!("reading {FONT}: {e}"))?;
    site.page("/real/font.ttf", Page::bytes("font/ttf", font));
    for s in 0..STYLESHEETS {
        site.page(
            format!("/real/style{s}.css"),
            Page::bytes("text/css", stylesheet(s)),
        );
    }
    for j in 0..SCRIPTS {
        site.page(
            format!("/real/script{j}.js"),
            Page::bytes("application/javascript", script(j)),
        );
    }
    for i in 0..IMAGES {
        site.page(
            format!("/real/img{i}.png"),
            Page::bytes("image/png", image(i)?),
        );
    }
    for p in 0..REAL_PAGES {
        site.page(format!("/real/page{p}"), Page::html(document(p)));
    }
    Ok(())
}

fn document(p: usize) -> String {
    let mut html = String::from("<!doctype html><html><head><meta charset=utf-8>");
    html.push_str(&format!("<title>Reference, part {p}</title>"));
    for s in 0..STYLESHEETS {
        html.push_str(&format!(
            "<link rel=stylesheet href=\"/real/style{s}.css\">"
        ));
    }
    for j in 0..SCRIPTS {
        html.push_str(&format!(
            "<script defer src=\"/real/script{j}.js\"></script>"
        ));
    }
    html.push_str("</head><body><nav id=toc></nav><main>");
    for section in 0..40 {
        html.push_str(&format!("<h2 id=s{section}>Section {p}.{section}</h2>"));
        for para in 0..3 {
            html.push_str("<p>");
            for w in 0..60 {
                html.push_str(
                    [
                        "lorem ",
                        "ipsum ",
                        "dolor ",
                        "sit ",
                        "amet ",
                        "<code>fn</code> ",
                    ][(w + para + section) % 6],
                );
            }
            html.push_str("</p>");
        }
        if section % 4 == 0 {
            let i = (section / 4 + p) % IMAGES;
            html.push_str(&format!(
                "<img src=\"/real/img{i}.png\" width=320 height=200 alt=\"figure\">"
            ));
        }
        if section % 5 == 0 {
            html.push_str("<pre class=code>");
            for line in 0..12 {
                html.push_str(&format!(
                    "let value_{line} = compute({line}, &mut state);\n"
                ));
            }
            html.push_str("</pre>");
        }
    }
    html.push_str("</main></body></html>");
    html
}

fn stylesheet(s: usize) -> String {
    let mut css = String::new();
    if s == 0 {
        css.push_str("@font-face{font-family:Doc;src:url(/real/font.ttf) format('truetype')}");
        css.push_str("body{font-family:Doc,sans-serif;margin:0 auto;max-width:900px;color:#222}");
        css.push_str("pre.code{background:#f4f4f4;padding:8px;font:13px monospace}");
    }
    for i in 0..600 {
        css.push_str(&format!(
            ".c{s}-{i}{{margin:{}px;padding:{}px;color:#{:06x};border:1px solid #{:06x}}}\n",
            i % 7,
            i % 5,
            (i * 2654435761usize) & 0xffffff,
            (i * 40503) & 0xffffff
        ));
    }
    css
}

fn script(j: usize) -> String {
    let mut js = String::new();
    // Work a documentation page's scripts do: a table of contents, some
    // highlighting, a search index.
    js.push_str(&format!(
        "(function(){{var toc=document.getElementById('toc');\
         document.querySelectorAll('h2').forEach(function(h,i){{if(i%{}==0){{var a=document.createElement('a');a.href='#'+h.id;a.textContent=h.textContent;toc.appendChild(a);}}}});\
         document.querySelectorAll('pre.code').forEach(function(p){{p.innerHTML=p.textContent.replace(/\\b(let|fn)\\b/g,'<b>$1</b>');}});\
         var index={{}};document.querySelectorAll('p').forEach(function(p,i){{p.textContent.split(' ').forEach(function(w){{(index[w]=index[w]||[]).push(i);}});}});\
         window.searchIndex{j}=index;}})();\n",
        j + 2
    ));
    for i in 0..800 {
        js.push_str(&format!(
            "function helper_{j}_{i}(a,b){{return (a*{i}+b)%{};}}\n",
            i + 7
        ));
    }
    js
}

fn image(i: usize) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (320u32, 200u32);
    let mut rng = fastrand::Rng::with_seed(i as u64);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let noise = rng.u8(0..24);
            data.extend_from_slice(&[
                ((x + i as u32 * 30) % 256) as u8 ^ noise,
                ((y * 2) % 256) as u8,
                ((x + y) % 256) as u8 ^ (noise / 2),
            ]);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&data)?;
    Ok(out)
}
