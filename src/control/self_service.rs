//! Revocations asked for on the verify port by a key's holder: the shard has checked the
//! secret; here the revocation is carried out like an admin's REVOKE and answered once durable
//! and applied on every shard.

use std::rc::Rc;

use super::shards::ShardEnd;
use super::{keys, Caller, Control};
use crate::admin::RevokeRequest;
use crate::link::{RevocationAnswer, RevocationRequest};

pub(super) async fn carry_out(
    control: Rc<Control>,
    shard: Rc<ShardEnd>,
    request: RevocationRequest,
) {
    let RevocationRequest { ticket, key } = request;
    let revoke = RevokeRequest {
        id: Some(key.0),
        credential: None,
        reason: "self-service".into(),
    };
    let caller = Caller::new("self-service", None);
    let done =
        super::replicated::serialized(&control, || keys::revoke(&control, &caller, revoke.clone()))
            .await
            .is_ok();
    shard.answer(RevocationAnswer { ticket, done });
}
