"""Repository behaviour that the service's guarantees rest on."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from opsconductor_auth.models import RefreshToken, SigningKeyRecord
from opsconductor_auth.repository import RefreshTokenRepository, SigningKeyRepository

NOW = datetime(2030, 1, 1, tzinfo=UTC)


async def _token(repo: RefreshTokenRepository, family_id, *, expires_at, name: str):
    return await repo.add(RefreshToken(family_id=family_id, user_id="u1", token_hash=name * 64,
                                       created_at=NOW, expires_at=expires_at,
                                       access_jti=f"jti-{name}",
                                       access_expires_at=NOW + timedelta(minutes=15)))


class TestMarkUsed:
    async def test_a_token_is_spent_exactly_once(self, auth):
        db = auth.app.state.db
        async with db.transaction() as session:
            repo = RefreshTokenRepository(session)
            family = await repo.add_family("u1")
            token = await _token(repo, family.id, expires_at=NOW, name="a")

        async def claim() -> bool:
            async with db.transaction() as session:
                return await RefreshTokenRepository(session).mark_used(token.id, NOW)

        results = await asyncio.gather(*[claim() for _ in range(4)])
        assert sorted(results) == [False, False, False, True]


class TestRevokeFamilies:
    async def test_only_live_families_count_and_live_access_tokens_are_listed(self, auth):
        async with auth.app.state.db.transaction() as session:
            repo = RefreshTokenRepository(session)
            first = await repo.add_family("u1")
            second = await repo.add_family("u1")
            await _token(repo, first.id, expires_at=NOW, name="a")
            await _token(repo, second.id, expires_at=NOW, name="b")

            assert await repo.revoke_families([first.id], NOW, "test") == [first.id]
            assert await repo.revoke_families([first.id, second.id], NOW, "test") == [second.id]
            assert await repo.live_family_ids("u1") == []
            live = await repo.live_access_tokens([first.id], NOW)
            assert live == [("jti-a", NOW + timedelta(minutes=15))]
            assert await repo.live_access_tokens([first.id], NOW + timedelta(hours=1)) == []


class TestPurge:
    async def test_removes_expired_tokens_and_emptied_families(self, auth):
        async with auth.app.state.db.transaction() as session:
            repo = RefreshTokenRepository(session)
            gone = await repo.add_family("u1")
            kept = await repo.add_family("u1")
            await _token(repo, gone.id, expires_at=NOW - timedelta(seconds=1), name="a")
            await _token(repo, kept.id, expires_at=NOW - timedelta(seconds=1), name="b")
            await _token(repo, kept.id, expires_at=NOW + timedelta(days=1), name="c")

            assert await repo.purge_expired(NOW) == 2
            assert await repo.family(gone.id) is None
            assert await repo.family(kept.id) is not None


class TestPublishedKeys:
    async def test_retired_keys_stay_until_the_cutoff(self, auth):
        async with auth.app.state.db.transaction() as session:
            repo = SigningKeyRepository(session)
            await repo.retire_all_except("nothing", NOW - timedelta(days=1))  # auth's own key
            for kid, retired in (("live", None), ("recent", NOW - timedelta(seconds=10)),
                                 ("old", NOW - timedelta(hours=1))):
                await repo.add(SigningKeyRecord(kid=kid, public_jwk=json.dumps({"kid": kid}),
                                                first_seen_at=NOW - timedelta(days=2),
                                                retired_at=retired))

            published = await repo.published(NOW - timedelta(minutes=16))

        assert sorted(r.kid for r in published) == ["live", "recent"]
