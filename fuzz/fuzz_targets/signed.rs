//! Signs a body as a cluster peer would (shared by the cluster targets): the body, then its
//! HMAC-SHA256 with the first key.

use heartsink::proto::keyring::Keyring;

pub fn signed(body: &[u8], keys: &Keyring) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = keys.keys()[0].mac();
    mac.update(body);
    let mut out = body.to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}
