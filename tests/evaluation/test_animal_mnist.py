"""fewstep/evaluation/animal_mnist.py's sampling protocol: class-balanced labels, noise from the given seed, and a
student's re-noising from a fresh generator seeded SAMPLER_SEED on every call, so each benchmark scores a run alike."""

import torch

from fewstep.evaluation.animal_mnist import SAMPLER_SEED, generate, student_samples


class RenoisingStudent(torch.nn.Module):
    """sample() mixes the noise with draws from the sampler's generator, as a multistep student's re-noising does."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def sample(self, noise, steps, cond, generator):
        self.calls.append((steps, cond["class_labels"].clone()))
        return 0.5 * noise + torch.randn(noise.shape, generator=generator) * steps


def test_student_samples_follow_the_protocol():
    student = RenoisingStudent()
    images = student_samples(student, 2, 30, seed=11)
    assert images.shape == (30, 1, 28, 28) and images.abs().max() <= 1  # clamped to the model range
    assert torch.equal(student.calls[0][1], torch.arange(30) % 10)  # sample i has class i % 10

    generator = torch.Generator().manual_seed(SAMPLER_SEED)
    by_hand = generate(lambda z, c: (0.5 * z + torch.randn(z.shape, generator=generator) * 2), 30, seed=11)
    assert torch.equal(images, by_hand)
    assert torch.equal(student_samples(student, 2, 30, seed=11), images)  # a fresh sampler generator per call
    assert not torch.equal(student_samples(student, 2, 30, seed=12), images)  # the noise follows the seed
