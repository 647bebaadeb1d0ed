import numpy as np

from rsitr_hf.data import load_rsitr
from rsitr_hf.data.seed_layout import read_lines
from rsitr_hf.demo.synthetic import NUMBER_WORDS, SOURCE, TARGET, make_example, vocabulary, write_seed_layout


def test_examples_are_deterministic_and_distinct():
    image, captions, scene = make_example(7, "train", 3)
    again_image, again_captions, again_scene = make_example(7, "train", 3)
    assert np.array_equal(np.asarray(image), np.asarray(again_image))
    assert captions == again_captions and scene == again_scene
    other_image, _, _ = make_example(7, "train", 4)
    test_image, _, _ = make_example(7, "test", 3)
    assert not np.array_equal(np.asarray(image), np.asarray(other_image))
    assert not np.array_equal(np.asarray(image), np.asarray(test_image))


def test_captions_describe_the_drawn_scene_with_several_attributes():
    for index in range(50):
        _, captions, scene = make_example(0, "train", index, domain="target")
        assert len(set(captions)) == 5
        singular, plural = TARGET.nouns[scene.kind]
        for caption in captions:
            words = caption.split()
            assert NUMBER_WORDS[scene.count] in words or TARGET.land_words[scene.land] in caption
            assert (
                sum(
                    attribute in caption
                    for attribute in (
                        NUMBER_WORDS[scene.count],
                        scene.colour,
                        TARGET.land_words[scene.land],
                        plural if scene.count > 1 else singular,
                        TARGET.water_words.get(scene.water, "no water"),
                    )
                )
                >= 2
            )
        assert any(NUMBER_WORDS[scene.count] in caption.split() for caption in captions)
        if scene.kind == "ship":
            assert scene.water != "none"


def test_domains_differ_in_style_and_wording():
    source_image, source_captions, _ = make_example(0, "train", 0, domain="source")
    target_image, target_captions, _ = make_example(0, "train", 0, domain="target")
    assert SOURCE.nouns["plane"] != TARGET.nouns["plane"]
    source_noise = np.abs(np.diff(np.asarray(source_image, dtype=float), axis=1)).mean()
    target_noise = np.abs(np.diff(np.asarray(target_image, dtype=float), axis=1)).mean()
    assert target_noise > source_noise
    every_word = set(vocabulary())
    assert all(set(caption.split()) <= every_word for caption in source_captions + target_captions)


def test_no_single_attribute_identifies_an_image():
    scenes = [make_example(0, "train", i)[2] for i in range(300)]
    for attribute in ("land", "water", "road", "kind", "count", "colour", "position"):
        values = [getattr(scene, attribute) for scene in scenes]
        most_specific = min(values.count(value) for value in set(values))
        assert most_specific > 10, attribute


def test_written_layout_matches_the_published_asymmetry(tmp_path):
    data_dir = write_seed_layout(tmp_path, "synth", num_train=6, num_test=3, seed=1, image_size=24)
    assert len(read_lines(data_dir / "train_filename.txt")) == 6
    assert len(read_lines(data_dir / "test_filename.txt")) == 15
    assert len(read_lines(data_dir / "test_caps.txt")) == 15
    dataset = load_rsitr(data_dir, validation_fraction=0)
    row = dataset["test"][2]
    image, captions, _ = make_example(1, "test", 2, image_size=24)
    assert row["captions"] == captions
    assert row["image"].size == (24, 24)
    assert np.array_equal(np.asarray(row["image"]), np.asarray(image))  # tif is lossless
