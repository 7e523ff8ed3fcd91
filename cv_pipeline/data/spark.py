"""A local Spark session with Delta Lake, started the same way by the library, Dagster and tests.

Delta's Scala jars are resolved once (`python -m cv_pipeline.data.spark warm`, run by `make setup`)
into a cache folder; later sessions load them from there with `spark.jars` and need no network.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DELTA_EXTENSIONS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def jar_cache_dir() -> Path:
    """Where Ivy puts Delta's jars (`CV_PIPELINE_JAR_CACHE`, default `~/.cache/cv_pipeline/ivy`)."""
    return Path(os.environ.get("CV_PIPELINE_JAR_CACHE", "~/.cache/cv_pipeline/ivy")).expanduser()


def delta_maven_coordinates() -> list[str]:
    """The Maven coordinates delta-spark's pip package asks for, for the installed pyspark."""
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    # A builder only records options; no JVM starts until getOrCreate().
    builder = configure_spark_with_delta_pip(SparkSession.Builder())
    return builder._options["spark.jars.packages"].split(",")


def cached_delta_jars() -> list[Path]:
    """Jars in the cache for the current Delta coordinates, or [] when not warmed yet."""
    jars_dir = jar_cache_dir() / "jars"
    for coordinate in delta_maven_coordinates():
        group, artifact, version = coordinate.split(":")
        if not (jars_dir / f"{group}_{artifact}-{version}.jar").is_file():
            return []
    # Delta's transitive dependencies resolved beside it, less the logging jars Spark already ships.
    return sorted(
        p for p in jars_dir.glob("*.jar") if not p.name.startswith(("org.apache.logging.log4j_", "org.slf4j_"))
    )


def delta_spark_config(app_name: str = "cv_pipeline", master: str | None = None) -> dict[str, str]:
    """Spark settings for a small local session with Delta; usable by `SparkSession.builder` and
    `dagster_pyspark.PySparkResource(spark_config=...)` alike."""
    # Local-mode Python workers follow PYSPARK_PYTHON rather than spark.pyspark.python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    shuffle_partitions = os.environ.get("CV_PIPELINE_SHUFFLE_PARTITIONS", "4")
    config = {
        "spark.master": master or os.environ.get("CV_PIPELINE_SPARK_MASTER", "local[*]"),
        "spark.app.name": app_name,
        "spark.sql.shuffle.partitions": shuffle_partitions,
        "spark.default.parallelism": shuffle_partitions,
        "spark.ui.enabled": "false",
        # Python workers must run this interpreter, where cv_pipeline and its dependencies are installed.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": os.environ.get("CV_PIPELINE_SPARK_DRIVER_MEMORY", "2g"),
        "spark.sql.session.timeZone": "UTC",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.warehouse.dir": str(Path(os.environ.get("CV_PIPELINE_HOME", ".cv_pipeline")).resolve() / "spark-warehouse"),
        "spark.driver.extraJavaOptions": "-Dderby.system.home=" + str(Path(os.environ.get("CV_PIPELINE_HOME", ".cv_pipeline")).resolve()),
        **DELTA_EXTENSIONS,
    }
    jars = cached_delta_jars()
    if jars:
        config["spark.jars"] = ",".join(str(j) for j in jars)
    else:
        config["spark.jars.packages"] = ",".join(delta_maven_coordinates())
        config["spark.jars.ivy"] = str(jar_cache_dir())
    return config


def get_spark(app_name: str = "cv_pipeline"):
    """The active Spark session, or a new local one with Delta configured."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder
    for key, value in delta_spark_config(app_name).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# Delta's runtime dependencies that Spark does not ship (what Ivy resolves for delta-spark 4.1).
MAVEN_FALLBACK_EXTRA = ("io.unitycatalog:unitycatalog-client:0.4.0", "com.google.code.findbugs:jsr305:3.0.2")


def fetch_delta_jars_with_maven() -> list[Path]:
    """Fallback when Spark's Ivy resolver cannot fetch the jars: `mvn dependency:copy` them into the
    cache under Ivy's file names, so `cached_delta_jars` picks them up."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("mvn") is None:
        raise RuntimeError("Spark could not resolve Delta's jars and Maven (mvn) is not installed")
    coordinates = list(delta_maven_coordinates())
    group, artifact, version = coordinates[0].split(":")
    coordinates += [f"io.delta:delta-storage:{version}", *MAVEN_FALLBACK_EXTRA]
    jars_dir = jar_cache_dir() / "jars"
    jars_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for coordinate in coordinates:
            subprocess.run(["mvn", "-q", "dependency:copy", f"-Dartifact={coordinate}", f"-DoutputDirectory={tmp}"],
                           check=True, timeout=600)
            group, artifact, version = coordinate.split(":")
            shutil.move(str(Path(tmp) / f"{artifact}-{version}.jar"), jars_dir / f"{group}_{artifact}-{version}.jar")
    return cached_delta_jars()


def warm_jar_cache(use_maven: bool = False) -> list[Path]:
    """Resolve Delta's jars into the cache (needs Maven Central once) and check a Delta write works."""
    import tempfile

    if use_maven:
        fetch_delta_jars_with_maven()
    try:
        spark = get_spark("cv_pipeline_warm")
    except Exception as exc:  # noqa: BLE001 - Ivy failures surface as a generic gateway error
        if use_maven:
            raise
        print(f"Spark could not start with Ivy-resolved Delta jars ({exc}); trying mvn dependency:copy", file=sys.stderr)
        return warm_jar_cache(use_maven=True)
    with tempfile.TemporaryDirectory() as tmp:
        spark.range(3).write.format("delta").save(tmp + "/t")
        rows = spark.read.format("delta").load(tmp + "/t").count()
    spark.stop()
    jars = cached_delta_jars()
    if rows != 3 or not jars:
        raise RuntimeError(f"Delta jar cache at {jar_cache_dir()} is not usable after warming")
    return jars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["warm", "jars"])
    parser.add_argument("--maven", action="store_true", help="fetch the jars with mvn instead of Spark's resolver")
    args = parser.parse_args(argv)
    if args.command == "jars":
        for jar in cached_delta_jars():
            print(jar)
        return 0
    if cached_delta_jars():
        print(f"Delta jars already cached in {jar_cache_dir()}")
        return 0
    jars = warm_jar_cache(use_maven=args.maven)
    print(f"Delta jars cached in {jar_cache_dir()}: {', '.join(j.name for j in jars)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def task_slots(spark) -> int:
    """Cores Spark runs tasks on. `defaultParallelism` is the configured `spark.default.parallelism`
    when set (CV_PIPELINE_SHUFFLE_PARTITIONS), not the core count, so local mode reads the master;
    a cluster falls back to defaultParallelism."""
    master = spark.sparkContext.master
    if master.startswith("local"):
        inner = master[len("local"):].strip("[]").split(",")[0]
        if inner == "*":
            return os.cpu_count() or 1
        return int(inner) if inner else 1
    return spark.sparkContext.defaultParallelism


def cheap_zip_cache_invalidation_in_worker() -> None:
    """Stop each Python task of a (reused) Spark worker from re-reading every zip on sys.path.

    PySpark's worker calls `importlib.invalidate_caches()` at the start of every task. On Python
    3.10/3.11 a zipimporter re-reads its archive's whole central directory there (CPython gh-103200,
    fixed in 3.12), once per importer, and a worker has one per pyspark sub-package imported from
    pyspark.zip plus spark-core's jar: 15-20 re-reads, ~0.1 s of CPU per task, more than decoding
    50 images. Here, in a Spark worker on Python < 3.12 only, a zipimporter skips the re-read while
    its archive's (mtime, size, inode) is unchanged, which is what invalidation is for. Once per
    worker process; the first task in each worker still pays.
    """
    import sys
    import zipimport

    if sys.version_info >= (3, 12) or getattr(zipimport.zipimporter, "_cv_pipeline_cheap_invalidate", False):
        return
    try:
        from pyspark import TaskContext
    except ImportError:
        return
    if TaskContext.get() is None:  # not inside a Spark task: leave the interpreter alone
        return
    original = zipimport.zipimporter.invalidate_caches
    stamps: dict[str, tuple] = {}

    def invalidate_caches(self):
        try:
            st = os.stat(self.archive)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp is not None and stamps.get(self.archive) == stamp:
            return
        original(self)
        stamps[self.archive] = stamp

    zipimport.zipimporter.invalidate_caches = invalidate_caches
    zipimport.zipimporter._cv_pipeline_cheap_invalidate = True
