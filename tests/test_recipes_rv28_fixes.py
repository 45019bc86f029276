"""rv28 F2: since 2078008 (rv27 F1) the folder holding a checkpoint as named was taken as its run whenever it held a
run record, so a link kept in run B's --output_dir to a checkpoint of run A (`B/init_from_a -> A/checkpoint-2`) was
resumed as B's own checkpoint: checked against B's record (the flags A trained it with were not compared) and trained
on into B beside B's own checkpoints, which a resume into a folder of another run's checkpoints is refused for. The
named folder comes first only for a link named as one of its checkpoints (`checkpoint-N`, linked back)."""

from hf_ext.recipes._common import checkpoint_run_folder

RECORD = "run.json"


def test_a_link_of_another_name_kept_in_another_runs_folder_names_the_run_it_points_into(tmp_path):
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    for folder in (run_a / "checkpoint-2", run_b / "checkpoint-1"):
        folder.mkdir(parents=True)
    for folder in (run_a, run_b):
        (folder / RECORD).write_text("{}")
    (run_b / "init_from_a").symlink_to(run_a / "checkpoint-2")
    assert checkpoint_run_folder(str(run_b / "init_from_a"), str(run_b), RECORD) == str(run_a)
    # linked back under its checkpoint name (moved to other storage): the folder as named is the run's
    (run_b / "checkpoint-3").symlink_to(run_a / "checkpoint-2")
    assert checkpoint_run_folder(str(run_b / "checkpoint-3"), str(run_b), RECORD) == str(run_b)
    # a link of another name into a folder without a record (moved to storage) still names the folder holding it
    store = tmp_path / "store" / "checkpoint-5"
    store.mkdir(parents=True)
    (run_b / "best").symlink_to(store)
    assert checkpoint_run_folder(str(run_b / "best"), str(tmp_path / "elsewhere"), RECORD) == str(run_b)
