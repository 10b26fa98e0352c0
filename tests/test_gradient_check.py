"""fastbn.gradient_check against derivatives known in closed form."""
import numpy as np

from fastbn.gradient_check import (eval_numerical_gradient, eval_numerical_gradient_array,
                                   grad_check_sparse, rel_error)


def test_scalar_gradient_of_cubic(capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    x0 = x.copy()
    grad = eval_numerical_gradient(lambda z: np.sum(z ** 3), x, verbose=True)
    np.testing.assert_allclose(grad, 3 * x0 ** 2, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(x, x0)            # perturbations undone
    assert len(capsys.readouterr().out.splitlines()) == x.size


def test_scalar_gradient_quiet(capsys):
    x = np.array([0.5, -1.0, 2.0])
    grad = eval_numerical_gradient(lambda z: np.sum(np.exp(z)), x, verbose=False)
    np.testing.assert_allclose(grad, np.exp(x), rtol=1e-8)
    assert capsys.readouterr().out == ""


def test_array_gradient_is_backprop_of_df():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5))
    df = rng.standard_normal((2, 3, 5))
    grad = eval_numerical_gradient_array(np.sin, x, df)
    np.testing.assert_allclose(grad, np.cos(x) * df, rtol=1e-7, atol=1e-9)


def test_array_gradient_with_in_place_output():
    # f returning a view of x must not fool the difference quotient.
    x = np.array([1.0, 2.0, 3.0])
    grad = eval_numerical_gradient_array(lambda z: z, x, np.array([1.0, -2.0, 0.5]))
    np.testing.assert_allclose(grad, [1.0, -2.0, 0.5], rtol=1e-9)


def test_rel_error():
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert abs(rel_error(np.array([1.0]), np.array([1.1])) - 0.1 / 2.1) < 1e-12
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0          # no 0/0


def test_grad_check_sparse_small_errors(capsys):
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    errs = grad_check_sparse(lambda z: np.sum(z ** 2), x, 2 * x, num_checks=5, seed=0)
    assert len(errs) == 5 and max(errs) < 1e-8
    assert "relative error" in capsys.readouterr().out
