//! Revocations asked for on the verify port by a key's holder: the shard has checked the
//! secret; here the revocation is carried out like an admin's REVOKE and answered once durable
//! and applied on every shard.

use std::rc::Rc;

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};

use super::{keys, Control};
use crate::admin::RevokeRequest;
use crate::link::{RevocationAnswer, RevocationRequest};

pub(super) async fn serve(
    control: Rc<Control>,
    requests: ConnectedReceiver<RevocationRequest>,
    answers: ConnectedSender<RevocationAnswer>,
) {
    while let Some(RevocationRequest { ticket, key }) = requests.recv().await {
        let request = RevokeRequest {
            id: Some(key.0),
            credential: None,
            reason: "self-service".into(),
        };
        let done = keys::revoke(&control, request).await.is_ok();
        if answers
            .send(RevocationAnswer { ticket, done })
            .await
            .is_err()
        {
            return;
        }
    }
}
