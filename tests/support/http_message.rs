//! Reading HTTP/1.1 messages off a socket, for the test proxies that sit between a worker and
//! the local SQS server.

use std::io::Read;

/// Reads one HTTP/1.1 request or response (its head and its Content-Length body) from
/// `stream`, keeping what arrives past it in `buffer` for the next call. `None` when the peer
/// closes the connection or the read fails first.
pub(crate) fn read_message(stream: &mut impl Read, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            let total = end + 4 + length;
            while buffer.len() < total {
                let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buffer.extend_from_slice(&chunk[..n]);
            }
            return Some(buffer.drain(..total).collect());
        }
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
    }
}
