//! A CSV file read in parts cut at record boundaries, in parallel, with
//! the line number of every record.

use super::*;

pub(super) fn csv_error(file: &Path, e: csv::Error) -> Error {
    let place = e
        .position()
        .map_or(Place::File("reading"), |p| Place::Line {
            line: p.line(),
            column: None,
        });
    Error::input(file, place, format!("malformed CSV: {e}"))
}

/// What went wrong in a CSV record, without the csv crate's position (which
/// counts from the start of a range, not of the file).
pub(super) fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 ({err})"),
        csv::ErrorKind::Io(err) => err.to_string(),
        _ => e.to_string(),
    }
}

/// CSV files from this size on are parsed in parallel.
pub(super) const PARALLEL_CSV_BYTES: u64 = 8 << 20;
/// The largest part of a CSV file read into memory at once (per thread).
pub(super) const CSV_PART_BYTES: u64 = 64 << 20;
/// The bytes of input read at once per thread.
pub(super) const CHUNK_BYTES_PER_THREAD: u64 = 64 << 20;

/// A byte range of a CSV file holding whole records, and the line it starts on.
pub(super) struct CsvRange {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) line: u64,
}

/// The cells of one range, column by column, and the line of each record.
pub(super) struct CsvPart {
    pub(super) columns: Vec<StringArray>,
    pub(super) lines: Vec<u64>,
}

/// Cut `[start, file end)` into about `parts` ranges of whole records.
pub(super) fn record_ranges(file: &Path, start: u64, parts: usize) -> Result<Vec<CsvRange>> {
    let end = std::fs::metadata(file)
        .map_err(|e| Error::io(file, e))?
        .len();
    let mut header = Vec::new();
    File::open(file)
        .and_then(|f| f.take(start).read_to_end(&mut header))
        .map_err(|e| Error::io(file, e))?;
    let line = 1 + memchr::memchr_iter(b'\n', &header).count() as u64;
    let step = (end.saturating_sub(start) / parts.max(1) as u64).max(1);
    let mut targets = (1..parts as u64).map(|k| start + k * step).peekable();
    let mut ranges = Vec::with_capacity(parts);
    let mut current = CsvRange { start, end, line };
    if targets.peek().is_some() {
        let mut f = std::io::BufReader::with_capacity(
            1 << 20,
            File::open(file).map_err(|e| Error::io(file, e))?,
        );
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(file, e))?;
        let (mut pos, mut quoted, mut newlines) = (start, false, 0u64);
        loop {
            let block = f.fill_buf().map_err(|e| Error::io(file, e))?;
            if block.is_empty() {
                break;
            }
            for i in memchr::memchr2_iter(b'"', b'\n', block) {
                if block[i] == b'"' {
                    quoted = !quoted;
                    continue;
                }
                newlines += 1;
                let at = pos + i as u64 + 1;
                if !quoted && targets.peek().is_some_and(|&t| at >= t) {
                    while targets.next_if(|&t| at >= t).is_some() {}
                    current.end = at;
                    let next = CsvRange {
                        start: at,
                        end,
                        line: line + newlines,
                    };
                    ranges.push(std::mem::replace(&mut current, next));
                }
            }
            let n = block.len();
            pos += n as u64;
            f.consume(n);
            if targets.peek().is_none() {
                break;
            }
        }
    }
    ranges.push(current);
    Ok(ranges)
}

/// The line a record starts on. The csv crate's own line count lags behind
/// after a CRLF or an empty line, so lines are counted here from the bytes.
pub(super) struct LineCounter<'a> {
    pub(super) bytes: &'a [u8],
    /// Where the last record started, and its line.
    pub(super) at: usize,
    pub(super) line: u64,
}

impl LineCounter<'_> {
    /// The line of the record the reader says starts at `byte`: line breaks
    /// left over from the previous record and empty lines are skipped first.
    fn line_at(&mut self, byte: usize) -> u64 {
        let byte = byte.min(self.bytes.len()).max(self.at);
        self.line += memchr::memchr_iter(b'\n', &self.bytes[self.at..byte]).count() as u64;
        let mut start = byte;
        while let Some(&b) = self.bytes.get(start).filter(|b| matches!(b, b'\r' | b'\n')) {
            self.line += (b == b'\n') as u64;
            start += 1;
        }
        self.at = start;
        self.line
    }
}

/// Parse the records of one range into string columns.
pub(super) fn read_csv_range(
    file: &Path,
    delimiter: u8,
    width: usize,
    range: &CsvRange,
) -> Result<CsvPart> {
    let mut bytes = vec![0; (range.end - range.start) as usize];
    File::open(file)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(range.start))?;
            f.read_exact(&mut bytes)
        })
        .map_err(|e| Error::io(file, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let mut counter = LineCounter {
        bytes: &bytes,
        at: 0,
        line: range.line,
    };
    let mut line_of =
        |p: Option<&csv::Position>| counter.line_at(p.map(|p| p.byte() as usize).unwrap_or(0));
    // Cells go straight into Arrow string builders: no allocation per cell.
    let mut builders: Vec<StringBuilder> = (0..width).map(|_| StringBuilder::new()).collect();
    let mut lines = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = line_of(e.position());
                return Err(Error::input(
                    file,
                    Place::Line { line, column: None },
                    format!("malformed CSV: {}", csv_message(&e)),
                ));
            }
        }
        let line = line_of(record.position());
        if record.len() != width {
            return Err(Error::input(
                file,
                Place::Line { line, column: None },
                format!(
                    "malformed CSV: {} fields where the header has {width}",
                    record.len()
                ),
            ));
        }
        lines.push(line);
        for (b, cell) in builders.iter_mut().zip(record.iter()) {
            // Most cells start and end with a visible ASCII character:
            // nothing to trim.
            let visible = |c: Option<&u8>| c.is_some_and(|&c| c.is_ascii_graphic());
            let bytes = cell.as_bytes();
            let cell = if visible(bytes.first()) && visible(bytes.last()) {
                cell
            } else {
                cell.trim()
            };
            if cell.is_empty() {
                b.append_null();
            } else {
                b.append_value(cell);
            }
        }
    }
    Ok(CsvPart {
        columns: builders.iter_mut().map(|b| b.finish()).collect(),
        lines,
    })
}
