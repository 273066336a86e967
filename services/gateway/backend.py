"""What the gateway asks of the workers, for REST and WebSocket alike: the
conversation (`shared.asking`), and the archive's search, history and stats."""

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.settings import GatewaySettings
from shared import dead_letters
from shared.asking import Conversations, R, unavailable
from shared.backlog import Backlog
from shared.events import (
    ArchiveQuery,
    HistoryQuery,
    HistoryReply,
    LearnerId,
    SearchQuery,
    SearchReply,
    StatsQuery,
    StatsReply,
)
from shared.replies import ReplyRouter
from shared.sessions import active_sessions
from shared.streams import ARCHIVE_QUERIES


class Backend(Conversations):
    def __init__(
        self,
        router: ReplyRouter,
        redis: Redis,
        settings: GatewaySettings,
        backlog: Backlog | None = None,
    ) -> None:
        super().__init__(
            router,
            redis,
            reply_timeout=settings.reply_timeout,
            audio_ttl=settings.audio_ttl,
            owner_ttl=settings.session_owner_ttl_s,
            backlog=backlog,
        )
        self._settings = settings

    async def _query(self, query: ArchiveQuery, expect: type[R]) -> R:
        return await self._ask(
            ARCHIVE_QUERIES, query, query.query_id, self._settings.archive_timeout, expect
        )

    # `learner`: whose captures are searched, listed or counted (the caller's; for
    # stats, None is everyone's: an admin's).

    async def search(self, query: str, limit: int, *, learner: LearnerId) -> SearchReply:
        return await self._query(
            SearchQuery(
                query=query,
                limit=limit,
                learner=learner,
                reply_to=self._router.stream,
                deadline=self._deadline(self._settings.archive_timeout),
            ),
            SearchReply,
        )

    async def history(self, session_id: str, limit: int, *, learner: LearnerId) -> HistoryReply:
        return await self._query(
            HistoryQuery(
                session_id=session_id,
                limit=limit,
                learner=learner,
                reply_to=self._router.stream,
                deadline=self._deadline(self._settings.archive_timeout),
            ),
            HistoryReply,
        )

    async def stats(self, *, learner: LearnerId | None) -> StatsReply:
        return await self._query(
            StatsQuery(
                learner=learner,
                reply_to=self._router.stream,
                deadline=self._deadline(self._settings.archive_timeout),
            ),
            StatsReply,
        )

    async def dead_letters(self) -> dict[str, int]:
        try:
            return await dead_letters.counts(self._redis)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def active_sessions(self) -> tuple[int, list[str]]:
        try:
            return await active_sessions(
                self._redis, self._settings.redis_ttl, self._settings.stats_max_session_ids
            )
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
