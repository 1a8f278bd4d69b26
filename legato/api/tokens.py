"""API token management (admin role)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from . import models
from .deps import ClientDep, TokenId, answer
from .problems import ACT, responses

router = APIRouter(tags=["tokens"])


@router.get("/tokens", response_model=list[models.Token], responses=responses(*ACT))
def list_tokens(client: ClientDep) -> Response:
    """Every token (active and revoked), without the tokens themselves."""
    return answer(client.tokens())


@router.post(
    "/tokens",
    response_model=models.NewToken,
    status_code=201,
    responses=responses(*ACT, 409, 413),
)
def create_token(body: models.CreateToken, client: ClientDep) -> Response:
    """Create a token; the answer holds the token, shown this once."""
    return answer(client.create_token(body.name, body.role), status_code=201)


@router.delete(
    "/tokens/{token_id}", response_model=models.Token, responses=responses(*ACT, 404, 409)
)
def revoke_token(token_id: TokenId, client: ClientDep) -> Response:
    """Revoke a token (by id or name); requests with it are refused from now on."""
    return answer(client.revoke_token(token_id))
