"""The lineage schema. Alembic migrations in `migrations/` create exactly these tables.

Scores an evaluation produces are also copied onto its candidate row
(`num_params`, `best_val_error`, `fitness`) so that population and Pareto
queries read one indexed table.
"""

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class SearchRow(Base):
    __tablename__ = "searches"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(100))
    config_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    client_token: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RoundRow(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("search_id", "round_index"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    round_index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    adapter_id: Mapped[str] = mapped_column(String(200), default="")
    tuning_loss: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PromptRow(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("search_id", "round_index", "prompt_index"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    round_index: Mapped[int] = mapped_column(Integer)
    prompt_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    temperature: Mapped[float] = mapped_column(Float)
    target_json: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    parents: Mapped[list["PromptParentRow"]] = relationship(
        order_by="PromptParentRow.position", cascade="all, delete-orphan"
    )


class PromptParentRow(Base):
    """A parent shown in a prompt. Parents are drawn with replacement, so one may repeat."""

    __tablename__ = "prompt_parents"

    prompt_id: Mapped[int] = mapped_column(
        ForeignKey("prompts.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)


class CandidateRow(Base):
    __tablename__ = "candidates"
    __table_args__ = (
        # The idempotency key: one row per sampled child (see RecordCandidateRequest).
        UniqueConstraint("search_id", "code_hash", "origin_key", name="uq_candidates_sample"),
        Index("ix_candidates_population", "search_id", "state", "fitness"),
        Index("ix_candidates_normalized", "search_id", "normalized_hash"),
        Index("ix_candidates_round", "search_id", "round_index"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    round_index: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(String(20))
    prompt_id: Mapped[int | None] = mapped_column(ForeignKey("prompts.id"))
    sample_index: Mapped[int] = mapped_column(Integer)
    # "round:prompt:sample", so that seeds and mutations (no prompt) have a key too.
    origin_key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    code: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str] = mapped_column(String(64))
    normalized_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"))
    raw_completion: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[str] = mapped_column(String(50), default="")
    model_id: Mapped[str] = mapped_column(String(300), default="")
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    max_new_tokens: Mapped[int | None] = mapped_column(Integer)
    sampling_seed: Mapped[int | None] = mapped_column(BigInteger)
    stop_json: Mapped[str] = mapped_column(Text, default="[]")
    adapter_id: Mapped[str] = mapped_column(String(200), default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    generation_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Copied from the evaluation for indexed queries.
    num_params: Mapped[int | None] = mapped_column(BigInteger)
    best_val_error: Mapped[float | None] = mapped_column(Float)
    test_error: Mapped[float | None] = mapped_column(Float)
    fitness: Mapped[float | None] = mapped_column(Float)

    parents: Mapped[list["CandidateParentRow"]] = relationship(
        foreign_keys="CandidateParentRow.child_id",
        order_by="CandidateParentRow.position",
        cascade="all, delete-orphan",
    )
    evaluation: Mapped["EvaluationRow | None"] = relationship(
        back_populates="candidate", uselist=False
    )


class CandidateParentRow(Base):
    """One edge of the family tree. A child may have several parents, in prompt order."""

    __tablename__ = "candidate_parents"

    child_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)


class EvaluationRow(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    num_params: Mapped[int] = mapped_column(BigInteger, default=0)
    best_val_error: Mapped[float | None] = mapped_column(Float)
    best_val_accuracy: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    steps_completed: Mapped[int] = mapped_column(BigInteger, default=0)
    # [[step, train_loss, val_accuracy, val_error], ...]
    curve_json: Mapped[str] = mapped_column(Text, default="[]")
    extra_json: Mapped[str] = mapped_column(Text, default="{}")
    log_tail: Mapped[str] = mapped_column(Text, default="")
    sandbox_backend: Mapped[str] = mapped_column(String(50), default="")
    trainer_id: Mapped[str] = mapped_column(String(200), default="")
    task: Mapped[str] = mapped_column(String(200), default="")
    budget_steps: Mapped[int] = mapped_column(BigInteger, default=0)
    budget_seed: Mapped[int] = mapped_column(BigInteger, default=0)
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    candidate: Mapped[CandidateRow] = relationship(back_populates="evaluation")
