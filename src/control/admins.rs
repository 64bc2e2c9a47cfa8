//! ADMIN_ADD, ADMIN_REMOVE, ADMIN_LIST: named admin tokens (`crate::admins`). A change is made
//! durable in `admins.json` before it takes effect and before it is answered; the token of a
//! removed admin is refused from the next request on, on every connection.

use std::rc::Rc;

use serde_json::json;

use super::{Caller, Control, Outcome, Refusal};
use crate::admin::{AdminAddRequest, AdminRemoveRequest};
use crate::admins::{self, Admins};
use crate::protocol::ErrorCode;
use crate::record::UnixSeconds;

async fn save(control: &Control, next: Admins) -> Result<(), Refusal> {
    let saving = next.clone();
    let saved = glommio::executor()
        .spawn_blocking(move || saving.save())
        .await;
    saved.map_err(|error| {
        Refusal::new(
            ErrorCode::Unavailable,
            format!("cannot write {}: {error}", admins::FILE_NAME),
        )
    })?;
    *control.admins.borrow_mut() = next;
    Ok(())
}

pub(super) async fn add(
    control: &Rc<Control>,
    caller: &Caller,
    request: AdminAddRequest,
) -> Outcome {
    let token = admins::new_token();
    let now = UnixSeconds::now().0;
    caller.note(json!({ "name": request.name, "role": request.role }));
    let next = control
        .admins
        .borrow()
        .with_added(&request.name, request.role, &token, now)
        .map_err(Refusal::invalid)?;
    save(control, next).await?;
    Ok(json!({ "name": request.name, "role": request.role, "token": token }))
}

pub(super) async fn remove(
    control: &Rc<Control>,
    caller: &Caller,
    request: AdminRemoveRequest,
) -> Outcome {
    caller.note(json!({ "name": request.name }));
    let next = control
        .admins
        .borrow()
        .without(&request.name)
        .map_err(|message| {
            if message.starts_with("no admin") {
                Refusal::not_found(message)
            } else {
                Refusal::invalid(message)
            }
        })?;
    save(control, next).await?;
    Ok(json!({ "removed": request.name }))
}

pub(super) fn list(control: &Control) -> Outcome {
    let admins = control.admins.borrow();
    let mut list =
        vec![json!({ "name": admins::BOOTSTRAP_NAME, "role": "write", "token": "admin.token" })];
    list.extend(
        admins.added().map(
            |admin| json!({ "name": admin.name, "role": admin.role, "created": admin.created }),
        ),
    );
    Ok(json!({ "admins": list }))
}
