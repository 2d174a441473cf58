from opsconductor_auth.models import Base
from opsconductor_db.migrations import run_env

run_env(Base.metadata)
