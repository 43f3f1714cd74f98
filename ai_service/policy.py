"""Who may do what with analyses: the ai service's one declared policy.

Every call is authenticated (`servicekit.callers`): a user's token acts for its own
account, a service account's acts by its scopes for the user it names in `user_id`.

    action    the user themself   an admin   a service with scope
    ANALYZE   yes                 -          analyses.write
    READ      yes                 yes        analyses.read

    method                                       action, for the user
    AnalyzeText, StreamAnalyzeText              ANALYZE  `user_id`, else the caller
    BatchAnalyzeTexts                            ANALYZE  `user_id`, else the caller
    ListAnalyses                                 READ     `user_id`, else the caller
    GetAnalysis                                  READ     the analysis's owner
    Operations.ListOperations                    READ     `filter`'s user_id, else the caller
    Operations.GetOperation, WaitOperation       READ     the operation's owner
    Operations.CancelOperation                   ANALYZE  the operation's owner

A `GetAnalysis` the caller may not read is NOT_FOUND, like an unknown id: whether
someone else's analysis exists is not the caller's to learn; so is an operation the
caller may not read (Get, Wait, Cancel). A `user_id` that names another user is
PERMISSION_DENIED (it depends only on the ids in the request), and so is cancelling an
operation the caller may read but not analyse for (an admin's, a reader service's).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping

from servicekit import authz
from servicekit.authz import Caller, Rule

ANALYSES_READ = "analyses.read"
ANALYSES_WRITE = "analyses.write"


class Action(enum.Enum):
    # Each reads as "may <value> users" (or "... this user").
    ANALYZE = "analyse texts for"
    READ = "read the analyses of"


POLICY: Mapping[Action, Rule] = {
    Action.ANALYZE: Rule(owner=True, scope=ANALYSES_WRITE),
    Action.READ: Rule(owner=True, admin=True, scope=ANALYSES_READ),
}


def allowed(caller: Caller, action: Action, owner: uuid.UUID) -> bool:
    return authz.allowed(caller, POLICY[action], owner)


def authorize(caller: Caller, action: Action, owner: uuid.UUID) -> None:
    """Return if the policy lets `caller` do `action` for `owner`; PermissionDenied if not."""
    authz.authorize(
        caller,
        POLICY[action],
        owner,
        verb=action.value,
        noun="other users",
        one="this user",
        owner_word="the user themself",
        owner_reason="NOT_ANALYSIS_OWNER",
    )
